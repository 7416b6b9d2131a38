"""``python -m experiments.curvature_calibration``: the grid's command line (see the package docstring)."""

from experiments import runner
from experiments.curvature_calibration import EXPERIMENT

runner.run_from_command_line(EXPERIMENT)
