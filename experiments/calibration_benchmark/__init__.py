"""Tan et al. (2025, arXiv:2505.23866): SAM calibrates better than SGD, CSAM better still, than every baseline.

    python -m experiments.calibration_benchmark --config=experiments/configs/calibration_benchmark.py:quick
    python -m experiments.calibration_benchmark --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.calibration_benchmark --config=...:fmnist --mode=report

``run`` trains one shard of the grid. First SGD's grid search over learning rate and weight decay
(App. C; the best validation accuracy is written to ``<workdir>/tuned.json``; a shard that finishes
its part of the search first waits for the others), then every method of ``config.methods`` in the
groups of ``benchmark.groups``, seeds first within a group, each run resumable. Every finished run is
evaluated at once into ``<job>/benchmark_eval.json``: test accuracy, ECE, classwise ECE, adaptive
ECE, TCE (ECE after temperature scaling on the validation set), ECE after isotonic regression,
AUROC, reliability-diagram bins, for Table S16's methods the top Hessian eigenvalue kappa_max of
the final model, OOD AUROC on the OOD sets present and, for the dropout models of Table 1, the same under
MC-dropout. A group whose members are seeds of one ensemble (Table 1) gets ``ensemble_eval.json``.

``report`` writes ``<workdir>/report/``: the tables shaped like the paper's (Table 3 / S5, S11 / S12,
S13, S15, S4, Table 1, S16; Markdown in ``report.md`` and one CSV each) with the paper's numbers
beside ours, Figure 3 (ECE raw / temperature-scaled / isotonic; ECE and TCE over training), the
reliability diagrams of SGD, SAM and CSAM, Figure 2 (kappa_min at theta and at the SAM point, along
the path between them, lambda and lambda_0 of eq. 2 during training) and Figure S6 (the gamma
sweep). ``export`` copies what the report reads (configs, summaries, evaluations, the metrics
records it plots) to ``<workdir>/compact``: small enough to commit, and ``report`` rebuilds the
report from it. ``all`` (default) runs, then reports.
"""

import functools
import os

from experiments import runner
from experiments.calibration_benchmark.evaluation import Evaluator, calibration_suite, run_shard
from experiments.calibration_benchmark.jobs import (
    ENSEMBLE_FILE,
    EVAL_FILE,
    TUNED_FILE,
    all_jobs,
    grid_files,
    grid_jobs,
    keep,
    method_jobs,
    tune_jobs,
    tuned_hparams,
)
from experiments.calibration_benchmark.report import report
from experiments.runner import Experiment

EXPERIMENT = Experiment(
    name="calibration_benchmark",
    default_config=os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "configs", "calibration_benchmark.py:quick"
    ),
    jobs=grid_jobs,
    report=report,
    report_file="report.md",
    run=run_shard,
    keep=keep,
    grid_files=grid_files,
)
main = functools.partial(runner.main, EXPERIMENT)

__all__ = [
    "ENSEMBLE_FILE",
    "EVAL_FILE",
    "EXPERIMENT",
    "TUNED_FILE",
    "Evaluator",
    "all_jobs",
    "calibration_suite",
    "grid_jobs",
    "main",
    "method_jobs",
    "report",
    "tune_jobs",
    "tuned_hparams",
]
