""" "Too Sharp, Too Sure": calibration follows curvature along training (Morosini et al. 2026, arXiv:2604.20614).

    python -m experiments.curvature_calibration --config=experiments/configs/curvature_calibration.py:quick
    python -m experiments.curvature_calibration --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.curvature_calibration --config=...:fmnist --mode=report

``run`` trains the jobs of one shard of the grid (each resumable, finished ones skipped); ``report``
reads every job's ``metrics.jsonl`` and writes to ``<workdir>/report/``: Table 1 (Pearson correlation
of ECE and KCE with GN sharpness over each trajectory, mean +- std over learning rates; Markdown and
CSV) with the paper's numbers beside ours, in four variants (the whole trajectory; without its first
5 % of steps; before interpolation only, train accuracy < 0.95; batch sharpness in place of GN
sharpness), the initial sharpness lambda_0 against each 2/lr, which runs interpolated, the Lanczos
accuracy check, Figure 1 (GD and SGD), the App. C dynamics figure per optimizer and loss, the
Figure A1 paths of ECE vs GN sharpness, the sign of the miscalibration along training, and the App. D
check of MSE underconfidence. ``all`` (default) runs then reports. ``export`` writes a compact copy of
the finished runs (config, summary, the metrics the report reads) to ``<workdir>/compact/``, small
enough to commit: ``report`` on that copy rebuilds the report, and ``run`` on it continues the grid.
"""

import functools
import os
from collections.abc import Sequence

import ml_collections

from experiments import runner
from experiments.curvature_calibration.protocol import EOS_OPTIMIZERS, REPORT_KEYS, TABLE_ROWS, VARIANTS
from experiments.curvature_calibration.report import report
from experiments.grid import Job, expand_grid
from experiments.runner import Experiment
from experiments.store import Kept, kept_keys
from sam_jax.training import Run, top_eigenvalue


def initial_sharpness(run: Run, losses: Sequence[str] = ("cross_entropy",)) -> dict[str, float]:
    """lambda_0: the GN sharpness of a run's initial parameters on its whole training subset, per loss.

    The quantity the learning rates of the plain gradient methods are chosen against (2/lr >
    lambda_0, so that each run starts below the edge of stability and sharpens into it; Cohen et
    al. 2021, arXiv:2103.00065; Morosini et al. 2026, arXiv:2604.20614, Sec. 3). The initial
    parameters depend on the seed and the model, not on the loss, so one run serves every loss.
    Lanczos stops at an estimated relative error of 1e-5.

    Args:
      run: a built run (``sam_jax.training.build_run``) whose ``init_state`` is measured.
      losses: loss names whose Gauss-Newton matrices are measured.

    Returns:
      ``{loss: lambda_0}``.
    """
    train = run.data.train
    return {
        loss: top_eigenvalue(
            run,
            run.init_state,
            train.images,
            train.labels,
            curvature="gauss_newton",
            loss=loss,
            num_iters=60,
            tolerance=1e-5,
        )
        for loss in losses
    }


def run_order(jobs: Sequence[Job], priority: Sequence[str] = ()) -> list[Job]:
    """Jobs in the order to train them: the cross-entropy runs of the ``priority`` groups (the
    grid's ``grid.priority``; Table 1's main rows) seed by seed, then the other cross-entropy runs
    and the other losses (App. D), seed by seed, one seed of each before the next, so an interrupted
    grid has whole seeds of the main table first and then one seed of every other row and figure.
    Within a seed, the priority groups train in their listed order."""

    def key(job: Job) -> tuple[bool, int, int, int]:
        cross_entropy = job.config.loss.name == "cross_entropy"
        tier = 0 if cross_entropy and job.group in priority else 1 if cross_entropy else 2
        rank = priority.index(job.group) if job.group in priority else len(priority)
        return (tier > 0, job.config.seed, tier, rank)

    return sorted(jobs, key=key)


def _training_order(config: ml_collections.ConfigDict, jobs: list[Job]) -> list[Job]:
    return run_order(jobs, tuple(config.grid.get("priority", ())))


EXPERIMENT = Experiment(
    name="curvature_calibration",
    default_config=os.path.join(
        os.path.dirname(os.path.dirname(__file__)), "configs", "curvature_calibration.py:quick"
    ),
    jobs=expand_grid,
    report=report,
    report_file="table1.md",
    exclusive=True,
    order=_training_order,
    keep=lambda config, job: Kept(metrics=kept_keys(REPORT_KEYS)),
)
main = functools.partial(runner.main, EXPERIMENT)

__all__ = [
    "EOS_OPTIMIZERS",
    "EXPERIMENT",
    "REPORT_KEYS",
    "TABLE_ROWS",
    "VARIANTS",
    "initial_sharpness",
    "main",
    "report",
    "run_order",
]
