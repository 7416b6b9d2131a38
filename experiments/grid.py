"""A small grid runner: expand a grid config into independent, resumable training jobs.

A grid config is a run config (``sam_jax.training.default_config``) plus a ``grid`` block::

    grid.seeds = (0, 1)
    grid.optimizers.<label> = ConfigDict(
        optimizer="sam",                 # optional: the registered optimizer (default: the label)
        learning_rates=(...),            # one job per learning rate
        losses=("cross_entropy",),       # and per loss
        learning_rates_by_loss=ConfigDict(mse=(...)),  # optional: other rates for one loss
        axes=(("optimizer.bulk_sgd.k", (1, 3, 5)),),  # optional: one job per value of each config path
        overrides=ConfigDict(...))       # nested fields set on that optimizer's runs

A label names the method in job directories and reports; ``optimizer`` lets two labels run the same
optimizer with other settings (SAM-SGD and SAM-Adam: ``sam`` with ``base`` sgd or adam). The base
config is shared by every optimizer of the grid, and a run may only change the
hyper-parameter blocks its optimizer reads (``optimizer.<name>`` and, for the SAM family, the block
of its ``base``; see ``sam_jax.training.validate_config``). Per-optimizer settings therefore go into
``overrides``, e.g. ``overrides=ConfigDict({"optimizer": {"sgd": {"momentum": 0.0}}})`` for ``sgd``
and the same for ``sam`` (whose ``base`` is ``sgd``); ``losses`` sets ``loss.name``.

``axes`` sweeps any field of the run config, named by its dotted path: the jobs are the product of the
axes' values (in the order listed), each setting its fields, and the label of a job's group appends
``_<last part of the path><value>`` per axis (``bulk_sgd_k3`` for ``optimizer.bulk_sgd.k = 3``).

Each job trains in its own directory ``<workdir>/<group>/<loss>/lr<lr>/seed<seed>``, so
jobs can run in any order, in several processes (``shard_jobs``, or ``run_jobs(exclusive=True)``: each
process trains the next job that no other one holds), and be interrupted: a job restarts from the
loop's latest checkpoint (``resume``), and a job whose ``summary.json`` exists is skipped.
"""

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

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
    train_and_evaluate,
)
from sam_jax.training.distributed import is_primary_process
from sam_jax.training.workdir import try_workdir_lock, workdir_lock
from sam_jax.training.writers import SUMMARY_FILE

logger = logging.getLogger(__name__)

AfterJob = Callable[["Job", Run], None]
JobHooks = Callable[["Job", Run], Sequence[Hook]]
GRID_FIELDS = ("optimizer", "learning_rates", "losses", "learning_rates_by_loss", "axes", "overrides")


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of a grid.

    Attributes:
      name: the job's directory relative to the grid workdir (``sgd/cross_entropy/lr0.05/seed0``).
      group: the label the report groups by: the optimizer's label and its axis values (``sgd``,
        ``bulk_sgd_k3``).
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

    def summary(self) -> dict[str, Any]:
        """The job's ``summary.json`` ({} while it has none: unfinished)."""
        if not self.done:
            return {}
        with open(os.path.join(self.workdir, SUMMARY_FILE)) as f:
            return json.load(f)


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
    if "ks" in spec:
        raise ValueError(
            f"grid.optimizers.{name}.ks is replaced by an axis over its config path: "
            f'axes=(("optimizer.{spec.get("optimizer") or name}.k", {tuple(spec.ks)!r}),).'
        )
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
    for axis in spec.get("axes") or ():
        if len(axis) != 2 or not isinstance(axis[0], str) or not tuple(axis[1]):
            raise ValueError(
                f"grid.optimizers.{name}.axes has {axis!r}; each axis is (dotted config path, nonempty tuple of "
                'values), e.g. ("optimizer.bulk_sgd.k", (1, 3, 5)).'
            )


def _set_path(config: ml_collections.ConfigDict, path: str, value: Any, where: str) -> None:
    """Sets the field at the dotted ``path`` of ``config``, which must exist."""
    *blocks, field = path.split(".")
    node = config
    for part in blocks + [field]:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"grid.optimizers.{where}.axes names {path!r}, which the run config does not have.")
        if part != field:
            node = node[part]
    node[field] = value


def _axis_points(spec: ml_collections.ConfigDict) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the spec's axis values, as ``((path, value), ...)``, in the listed order."""
    points: list[tuple[tuple[str, Any], ...]] = [()]
    for path, values in spec.get("axes") or ():
        points = [point + ((path, value),) for point in points for value in values]
    return points


def _group_label(name: str, point: Sequence[tuple[str, Any]]) -> str:
    """``name`` followed by ``_<last part of the path><value>`` per axis (``bulk_sgd_k3``)."""
    return name + "".join(f"_{path.rsplit('.', 1)[-1]}{value}" for path, value in point)


def expand_grid(config: ml_collections.ConfigDict) -> list[Job]:
    """All jobs of a grid config, in a fixed order (optimizer, axis values, loss, learning rate, seed).

    Args:
      config: a run config with a ``grid`` block (see the module docstring).

    Returns:
      The jobs; each config is a copy of ``config`` without ``grid``, with the job's overrides,
      ``optimizer.name``, its axis values, ``loss.name``, learning rate, seed, ``workdir`` and
      ``resume=True`` set.

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
        for point in _axis_points(spec):
            group = _group_label(name, point)
            by_loss = spec.get("learning_rates_by_loss") or {}
            for loss in tuple(spec.get("losses") or (config.loss.name,)):
                for learning_rate in by_loss.get(loss, spec.learning_rates):
                    for seed in seeds:
                        job_name = os.path.join(group, loss, f"lr{format_learning_rate(learning_rate)}", f"seed{seed}")
                        job = ml_collections.ConfigDict(base.to_dict())
                        _set_nested(job, (spec.get("overrides") or ml_collections.ConfigDict()).to_dict(), name)
                        job.optimizer.name = spec.get("optimizer") or name
                        for path, value in point:
                            _set_path(job, path, value, name)
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
    run_data: RunData | None = None,
    after_job: AfterJob | None = None,
    hooks: JobHooks | None = None,
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
    if job.done:
        return job.summary()
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
        with open(os.path.join(job.workdir, SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=2)
        return summary


@contextlib.contextmanager
def _compilation_cache(directory: str | None):
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
    compilation_cache_dir: str | None = None,
    after_job: AfterJob | None = None,
    hooks: JobHooks | None = None,
    run_data: RunDataCache | None = None,
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
