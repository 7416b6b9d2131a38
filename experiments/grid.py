"""A small grid runner: expand a grid config into independent, resumable training jobs.

A grid config is a run config (``sam_jax.training.default_config``) plus a ``grid`` block::

    grid.seeds = (0, 1)
    grid.optimizers.<label> = ConfigDict(
        optimizer="sam",                 # optional: the registered optimizer (default: the label)
        learning_rates=(...),            # one job per learning rate
        losses=("cross_entropy",),       # and per loss
        learning_rates_by_loss=ConfigDict(mse=(...)),  # optional: other rates for one loss
        ks=(1, 3, 5),                    # bulk_sgd only: one job per optimizer.bulk_sgd.k
        overrides=ConfigDict(...))       # nested fields set on that optimizer's runs

A label names the method in job directories and reports; ``optimizer`` lets two labels run the same
optimizer with other settings (SAM-SGD and SAM-Adam: ``sam`` with ``base`` sgd or adam). The base
config is shared by every optimizer of the grid, and a run may only change the
hyper-parameter blocks its optimizer reads (``optimizer.<name>`` and, for the SAM family, the block
of its ``base``; see ``sam_jax.training.validate_config``). Per-optimizer settings therefore go into
``overrides``, e.g. ``overrides=ConfigDict({"optimizer": {"sgd": {"momentum": 0.0}}})`` for ``sgd``
and the same for ``sam`` (whose ``base`` is ``sgd``); ``losses`` sets ``loss.name``.

Each job trains in its own directory ``<workdir>/<optimizer>[_k<k>]/<loss>/lr<lr>/seed<seed>``, so
jobs can run in any order, in several processes (``shard_jobs``, or ``run_jobs(exclusive=True)``: each
process trains the next job that no other one holds), and be interrupted: a job restarts from the
loop's latest checkpoint (``resume``), and a job whose ``summary.json`` exists is skipped.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import ml_collections
from jax.experimental.compilation_cache import compilation_cache
from tqdm.auto import tqdm

from sam_jax.data import ensure_debian_fashion_mnist
from sam_jax.training import (
    Hook,
    Run,
    RunData,
    TrainingDivergedError,
    build_run,
    load_run_data,
    read_metrics,
    train_and_evaluate,
)
from sam_jax.training.distributed import is_primary_process
from sam_jax.training.workdir import try_workdir_lock, workdir_lock
from sam_jax.training.writers import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

logger = logging.getLogger(__name__)

AfterJob = Callable[["Job", Run], None]
JobHooks = Callable[["Job", Run], Sequence[Hook]]
GRID_FIELDS = ("optimizer", "learning_rates", "losses", "learning_rates_by_loss", "ks", "overrides")


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of a grid.

    Attributes:
      name: the job's directory relative to the grid workdir (``sgd/cross_entropy/lr0.05/seed0``).
      group: the optimizer label the report groups by (``sgd``, ``bulk_sgd_k3``).
      config: the complete run config of this job; its ``workdir`` is the job directory.
    """

    name: str
    group: str
    config: ml_collections.ConfigDict

    @property
    def workdir(self) -> str:
        return self.config.workdir

    @property
    def done(self) -> bool:
        return os.path.exists(os.path.join(self.workdir, SUMMARY_FILE))


def format_learning_rate(learning_rate: float) -> str:
    """Directory-safe text of a learning rate with four significant digits (``0.02857``)."""
    return f"{learning_rate:.4g}"


def _set_nested(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(
                f"grid.optimizers.{where}.overrides names {key!r}, which the run config "
                f"does not have; its fields are {sorted(config.keys())}."
            )
        if isinstance(value, Mapping) and isinstance(config[key], ml_collections.ConfigDict) and not config[key]:
            config[key] = ml_collections.ConfigDict(dict(value))  # a free-form block such as model.kwargs
        elif isinstance(value, Mapping):
            _set_nested(config[key], value, f"{where}.{key}")
        else:
            config[key] = value


def _check_spec(name: str, spec: ml_collections.ConfigDict) -> None:
    unknown = set(spec.keys()) - set(GRID_FIELDS)
    if unknown:
        raise ValueError(f"grid.optimizers.{name} has unknown fields {sorted(unknown)}; allowed: {list(GRID_FIELDS)}.")
    if not spec.get("learning_rates") or any(lr <= 0 for lr in spec.learning_rates):
        raise ValueError(
            f"grid.optimizers.{name}.learning_rates={spec.get('learning_rates')!r} must "
            "be a nonempty tuple of positive numbers."
        )
    by_loss = spec.get("learning_rates_by_loss") or {}
    for loss, rates in by_loss.items():
        if loss not in tuple(spec.get("losses") or ()) or not rates or any(lr <= 0 for lr in rates):
            raise ValueError(
                f"grid.optimizers.{name}.learning_rates_by_loss.{loss}={rates!r} must name "
                "one of its losses and give a nonempty tuple of positive numbers."
            )
    if spec.get("ks") and spec.get("optimizer", name) != "bulk_sgd":
        raise ValueError(f"grid.optimizers.{name}.ks is only for bulk_sgd (its optimizer.bulk_sgd.k).")


def expand_grid(config: ml_collections.ConfigDict) -> list[Job]:
    """All jobs of a grid config, in a fixed order (optimizer, k, loss, learning rate, seed).

    Args:
      config: a run config with a ``grid`` block (see the module docstring).

    Returns:
      The jobs; each config is a copy of ``config`` without ``grid``, with the job's overrides,
      ``optimizer.name``, ``optimizer.bulk_sgd.k``, ``loss.name``, learning rate, seed, ``workdir``
      and ``resume=True`` set.

    Raises:
      ValueError: the grid block is missing or malformed.
    """
    if "grid" not in config or not config.grid.get("optimizers"):
        raise ValueError(
            "The config has no grid.optimizers block; use a grid preset such as "
            "experiments/configs/curvature_calibration.py:quick."
        )
    seeds = tuple(config.grid.get("seeds") or (config.seed,))
    base = ml_collections.ConfigDict(config.to_dict())
    del base["grid"]
    jobs = []
    for name, spec in config.grid.optimizers.items():
        _check_spec(name, spec)
        for k in tuple(spec.get("ks") or ()) or (None,):
            group = name if k is None else f"{name}_k{k}"
            by_loss = spec.get("learning_rates_by_loss") or {}
            for loss in tuple(spec.get("losses") or (config.loss.name,)):
                for learning_rate in by_loss.get(loss, spec.learning_rates):
                    for seed in seeds:
                        job_name = os.path.join(group, loss, f"lr{format_learning_rate(learning_rate)}", f"seed{seed}")
                        job = ml_collections.ConfigDict(base.to_dict())
                        _set_nested(job, (spec.get("overrides") or ml_collections.ConfigDict()).to_dict(), name)
                        job.optimizer.name = spec.get("optimizer") or name
                        if k is not None:
                            job.optimizer.bulk_sgd.k = k
                        job.loss.name = loss
                        job.optimizer.learning_rate = float(learning_rate)
                        job.seed = int(seed)
                        job.workdir = os.path.join(config.workdir, job_name)
                        job.resume = True
                        jobs.append(Job(job_name, group, job))
    return jobs


def parse_shard(text: str) -> tuple[int, int]:
    """Parses ``"i/n"`` (shard ``i`` of ``n``, zero-based) into ``(i, n)``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard={text!r} must look like i/n, e.g. 0/4.") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard={text!r}: need 0 <= i < n.")
    return index, count


def shard_jobs(jobs: Sequence[Job], index: int, count: int) -> list[Job]:
    """Every ``count``-th job from ``index``: interleaving spreads slow optimizers over the shards."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} must be in [0, {count}).")
    return list(jobs[index::count])


def data_key(config: ml_collections.ConfigDict) -> str:
    """Jobs with equal keys train on the same data (``RunData`` can be shared)."""
    return json.dumps(config.data.to_dict(), sort_keys=True)


class RunDataCache:
    """Loaded datasets by :func:`data_key`: the jobs of a grid, and whatever evaluates them after
    training, share one ``RunData`` per distinct data config."""

    def __init__(self) -> None:
        self._loaded: dict[str, RunData] = {}

    def __call__(self, config: ml_collections.ConfigDict) -> RunData:
        """The data of ``config``, loaded on first use (Fashion-MNIST from the Debian package)."""
        key = data_key(config)
        if key not in self._loaded:
            if config.data.name == "fashion_mnist" and not config.data.data_dir:
                ensure_debian_fashion_mnist()
            self._loaded[key] = load_run_data(config)
        return self._loaded[key]


def run_job(
    job: Job,
    run_data: Optional[RunData] = None,
    after_job: Optional[AfterJob] = None,
    hooks: Optional[JobHooks] = None,
) -> dict[str, Any]:
    """Trains one job (resuming from its checkpoint) unless its ``summary.json`` exists.

    A diverged run gets a summary ``{"diverged": true, ...}`` so that it is not retried; its
    metrics up to the divergence stay in ``metrics.jsonl``.

    Args:
      job: the job.
      run_data: its data, when already loaded.
      after_job: called as ``after_job(job, run)`` when the job has just finished training (not
        after a divergence, not for a job found done), with the :class:`Run` that trained it, so
        that a driver can evaluate the final checkpoint without building and compiling again.

    Returns:
      The job's summary.
    """
    path = os.path.join(job.workdir, SUMMARY_FILE)
    if job.done:
        with open(path) as f:
            return json.load(f)
    try:
        # The lock first: a second process on this job fails before it loads or compiles anything.
        with workdir_lock(job.workdir, active=is_primary_process()):
            run = build_run(job.config, run_data)
            summary = train_and_evaluate(job.config, job.workdir, hooks=hooks(job, run) if hooks else (), run=run)
            if after_job is not None:
                after_job(job, run)
        return summary
    except TrainingDivergedError as err:
        logger.warning("%s diverged: %s", job.name, err)
        summary = {"diverged": True, "error": str(err)}
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        return summary


CHECKPOINT_DIR = "checkpoints"
IN_PROGRESS_FILES = ("config.json", "metrics.jsonl")


def _complete_checkpoints(job: Job) -> list[int]:
    """The steps of ``job``'s checkpoints that Orbax finished writing, oldest first."""
    root = os.path.join(job.workdir, CHECKPOINT_DIR)
    if not os.path.isdir(root):
        return []
    return sorted(
        int(name)
        for name in os.listdir(root)
        if name.isdigit() and os.path.exists(os.path.join(root, name, "commit_success.txt"))
    )


def export_in_progress(jobs: Iterable[Job], out: str) -> list[str]:
    """Copies each started, unfinished job to ``out/<job name>`` so that another machine resumes it.

    A job that is still training when a session ends would start over on the next machine; this
    keeps its config, its whole ``metrics.jsonl`` and its newest complete checkpoint (about 3 MB
    for the 2x200 MLP on CIFAR-10 images; the records after that step are dropped on resume, as
    ``train_and_evaluate`` does). Copying ``out`` into a workdir restores them. Jobs without a
    complete checkpoint are left out (they would start over anyway). ``out`` is replaced.

    Args:
      jobs: the grid's jobs; finished ones are left out.
      out: the destination folder.

    Returns:
      The names of the jobs copied.
    """
    shutil.rmtree(out, ignore_errors=True)
    copied = []
    for job in jobs:
        steps = _complete_checkpoints(job)
        if job.done or not steps:
            continue
        target = os.path.join(out, job.name)
        os.makedirs(target)
        for name in IN_PROGRESS_FILES:
            shutil.copyfile(os.path.join(job.workdir, name), os.path.join(target, name))
        shutil.copytree(
            os.path.join(job.workdir, CHECKPOINT_DIR, str(steps[-1])),
            os.path.join(target, CHECKPOINT_DIR, str(steps[-1])),
        )
        copied.append(job.name)
    return copied


@contextlib.contextmanager
def _compilation_cache(directory: Optional[str]):
    """JAX's persistent compilation cache in ``directory`` for the duration (off when None).

    JAX decides once per process whether the cache is on, so it is reset on entry and exit.
    """
    if directory is None:
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    previous = {name: jax.config.values[name] for name in names}
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


@contextlib.contextmanager
def claim_job(job: Job) -> Iterator[bool]:
    """Holds the writer lock of ``job``'s directory for the duration; yields whether this process got it.

    The lock is the train loop's (``sam_jax.training.workdir.try_workdir_lock``, an ``flock`` on
    ``<job dir>/.lock``): the operating system drops it when the holder exits, killed or not, so an
    interrupted job is free for the next process that comes to it, and the loop, which takes the
    same lock, trains the claimed job without waiting for itself.
    """
    with try_workdir_lock(job.workdir) as mine:
        yield mine


def run_jobs(
    jobs: Iterable[Job],
    progress: bool = True,
    compilation_cache_dir: Optional[str] = None,
    after_job: Optional[AfterJob] = None,
    hooks: Optional[JobHooks] = None,
    run_data: Optional[RunDataCache] = None,
    exclusive: bool = False,
) -> None:
    """Runs jobs one after another, loading each dataset once; a tqdm bar counts finished jobs.

    Args:
      jobs: the jobs to run; finished ones (``summary.json`` present) are skipped.
      progress: show the bar over jobs.
      compilation_cache_dir: where to keep JAX's persistent compilation cache. Jobs of one grid
        share shapes, so the evaluation step and the curvature tracker compile once for all of
        them, in this process and in the other shards'.
      after_job: see :func:`run_job`.
      hooks: see :func:`run_job`.
      run_data: the loaded datasets to use and add to (a fresh cache when None); pass the one
        that ``after_job`` reads to load each dataset once in all.
      exclusive: train a job only under :func:`claim_job`, skipping jobs that another process is
        training. Several single-host processes given the same list then share it as a queue, each
        taking the next free job, which balances jobs of very different lengths better than
        ``shard_jobs``. Not for multi-host runs, where every process trains the same job.
    """
    jobs = list(jobs)
    run_data = run_data or RunDataCache()
    with (
        _compilation_cache(compilation_cache_dir),
        tqdm(total=len(jobs), disable=not progress, desc="jobs", unit="job") as bar,
    ):
        for job in jobs:
            bar.set_postfix_str(job.name)
            if not job.done:
                with claim_job(job) if exclusive else contextlib.nullcontext(True) as mine:
                    if not mine:
                        logger.info("%s is being trained by another process; skipped.", job.name)
                    elif not job.done:
                        run_job(job, run_data(job.config), after_job, hooks)
            bar.update(1)


def export_compact(jobs: Iterable[Job], workdir: str, keys: Sequence[str]) -> str:
    """Copies the finished ``jobs`` to ``<workdir>/compact``, small enough to commit.

    Each job keeps its ``config.json`` and ``summary.json`` and, of ``metrics.jsonl``, the ``keys``
    of each record (records with nothing but the step are dropped). The copy is laid out like the
    grid, so a report (or ``run``, which continues the grid) works on it with
    ``--config.workdir=<workdir>/compact``.

    Returns:
      The directory of the copy.
    """
    out = os.path.join(workdir, "compact")
    for job in jobs:
        if not job.done:
            continue
        target = os.path.join(out, os.path.relpath(job.workdir, workdir))
        os.makedirs(target, exist_ok=True)
        for name in (CONFIG_FILE, SUMMARY_FILE):
            if os.path.exists(os.path.join(job.workdir, name)):
                shutil.copyfile(os.path.join(job.workdir, name), os.path.join(target, name))
        if not os.path.exists(os.path.join(job.workdir, METRICS_FILE)):
            continue
        with open(os.path.join(target, METRICS_FILE), "w") as f:
            for record in read_metrics(job.workdir):
                kept = {k: record[k] for k in keys if k in record}
                if len(kept) > 1:
                    f.write(json.dumps(kept) + "\n")
    return out
