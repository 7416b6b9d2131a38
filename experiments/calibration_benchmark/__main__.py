"""``python -m experiments.calibration_benchmark``: the benchmark's command line (see the package docstring)."""

from experiments import runner
from experiments.calibration_benchmark import EXPERIMENT

runner.run_from_command_line(EXPERIMENT)
