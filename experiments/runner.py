"""One runner for every grid experiment: ``--mode=run|export|report|all``, ``--shard=i/n``, the results store.

An experiment is an :class:`Experiment`: its jobs, how a shard of them trains (by default the grid
runner, with what runs after each job and the hooks during it), what is kept of a finished job, and
how the report is built. A driver defines one and runs it::

    EXPERIMENT = Experiment(name="curvature_calibration", jobs=..., report=..., ...)
    main = functools.partial(runner.main, EXPERIMENT)  # main(config, mode, shard, store_dir, report_dir)
    if __name__ == "__main__":
        runner.run_from_command_line(EXPERIMENT)

The modes:

- ``run`` trains shard ``i/n`` of the jobs (each resumable, finished ones skipped), or only the
  jobs whose name matches one of ``--jobs``' shell patterns (``--jobs='swag/*,vogn/*/seed0'``). With
  ``--store=<folder>``, the store's records and unfinished jobs (``in_progress/``) are copied into
  the workdir first, so the grid continues where the committed records stopped.
- ``export`` keeps what the report reads of every finished job (``Experiment.keep``) and of the grid
  (``Experiment.grid_files``), with each unfinished job's newest checkpoint: into
  ``<workdir>/compact`` (laid out as the workdir), or, with ``--store``, into the store (new and
  changed runs appended; ``in_progress/`` replaced).
- ``report`` builds the report from the workdir, or, with ``--store``, from the store's records
  (unpacked into a temporary folder); it goes to ``--report_dir`` (default ``<workdir>/report``).
- ``all`` runs, then reports from the workdir.
"""

import contextlib
import dataclasses
import fnmatch
import functools
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence

import ml_collections
from absl import flags

from experiments import cli, store, tables
from experiments.grid import AfterJob, Job, JobHooks, parse_shard, run_jobs, shard_jobs
from experiments.store import Kept, compact_records, export_in_progress

MODES = ("run", "report", "export", "all")
Config = ml_collections.ConfigDict


def _no_grid_files(config: Config) -> Sequence[str]:
    return ()


def _as_listed(config: Config, jobs: list[Job]) -> list[Job]:
    return jobs


def _keep_config_and_summary(config: Config, job: Job) -> Kept:
    return Kept()


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The contract between a grid experiment and the runner.

    Attributes:
      name: the experiment's name (its driver module's).
      default_config: the config file and preset used without ``--config``.
      jobs: every job of the grid, in the order the report lists them.
      report: ``report(config, jobs, out)`` writes the report into the folder ``out`` (created),
        returns it; ``config.workdir`` holds the jobs.
      report_file: the file of the report printed after ``report``.
      run: ``run(config, select)`` trains the jobs that ``select(jobs)`` keeps of the job lists it
        builds (the shard and the ``--jobs`` patterns of the command line); None: the grid runner
        over ``jobs`` with ``after_job``, ``hooks`` and ``exclusive``.
      after_job: ``after_job(config)`` gives what runs after each job finishes training (with its
        :class:`Run`), e.g. evaluating the final checkpoint.
      hooks: ``hooks(config)`` gives the hooks that a job trains with.
      exclusive: processes of one shard share its jobs as a queue (``grid.run_jobs``).
      order: ``order(config, jobs)``: the jobs in training order (a shard takes every n-th of them).
      before_report: called with ``(config, jobs)`` before the report, e.g. to evaluate finished
        jobs whose evaluation an interruption cut short.
      keep: ``keep(config, job)``: what is kept of a finished job (``export`` and the store).
      grid_files: the grid's own files that the report reads, relative to the workdir (a tuning
        result, an ensemble's evaluation); kept when present.
    """

    name: str
    default_config: str
    jobs: Callable[[Config], list[Job]]
    report: Callable[[Config, Sequence[Job], str], str]
    report_file: str
    run: Callable[[Config, Callable[[Sequence[Job]], list[Job]]], None] | None = None
    after_job: Callable[[Config], AfterJob] | None = None
    hooks: Callable[[Config], JobHooks] | None = None
    exclusive: bool = False
    order: Callable[[Config, list[Job]], list[Job]] = _as_listed
    before_report: Callable[[Config, Sequence[Job]], None] | None = None
    keep: Callable[[Config, Job], Kept] = _keep_config_and_summary
    grid_files: Callable[[Config], Sequence[str]] = _no_grid_files

    def train(self, config: Config, index: int, count: int, patterns: Sequence[str] = ()) -> None:
        """Trains shard ``index`` of ``count`` of the jobs whose name matches one of ``patterns``
        (shell patterns, ``fnmatch``; empty: every job).

        Raises:
          ValueError: a pattern that matches none of the grid's jobs (``select_jobs``).
        """
        select_jobs(self.jobs(config), patterns)  # a pattern that matches no job fails here, before any training

        def select(jobs: Sequence[Job]) -> list[Job]:
            return shard_jobs([job for job in jobs if matches(job, patterns)], index, count)

        if self.run is not None:
            self.run(config, select)
            return
        run_jobs(
            select(self.order(config, self.jobs(config))),
            compilation_cache_dir=os.path.join(config.workdir, "jax_cache"),
            after_job=self.after_job(config) if self.after_job else None,
            hooks=self.hooks(config) if self.hooks else None,
            exclusive=self.exclusive,
        )

    def records(self, config: Config) -> dict[str, dict[str, str]]:
        """What is kept of the workdir: ``{directory relative to the workdir: {file name: text}}``."""
        records = compact_records(self.jobs(config), config.workdir, functools.partial(self.keep, config))
        for path in self.grid_files(config):
            full = os.path.join(config.workdir, path)
            if os.path.exists(full):
                with open(full, "rb") as f:
                    records.setdefault(os.path.dirname(path), {})[os.path.basename(path)] = f.read().decode("utf-8")
        return records


def matches(job: Job, patterns: Sequence[str]) -> bool:
    """Whether ``job``'s name matches one of the shell ``patterns`` (every job does when there are none)."""
    return not patterns or any(fnmatch.fnmatchcase(job.name, pattern) for pattern in patterns)


def select_jobs(jobs: Sequence[Job], patterns: Sequence[str]) -> list[Job]:
    """The jobs whose name matches at least one of the shell ``patterns`` (all jobs when empty), in order.

    Raises:
      ValueError: a pattern that matches no job (a typo would otherwise train nothing, silently).
    """
    unmatched = [pattern for pattern in patterns if not any(matches(job, [pattern]) for job in jobs)]
    if unmatched:
        names = ", ".join(job.name for job in jobs[:6]) or "(none yet)"
        raise ValueError(f"--jobs pattern(s) {unmatched} match no job; job names look like: {names}, ...")
    return [job for job in jobs if matches(job, patterns)]


def export(experiment: Experiment, config: Config, store_dir: str = "") -> str:
    """Keeps the finished jobs' records and the unfinished jobs' newest checkpoints (see the module
    docstring); returns where they went."""
    records = experiment.records(config)
    jobs = experiment.jobs(config)
    if store_dir:
        store.append_runs(store_dir, records)
        out = store_dir
    else:
        out = os.path.join(config.workdir, "compact")
        for path, files in records.items():
            os.makedirs(os.path.join(out, path), exist_ok=True)
            for name, text in files.items():
                with open(os.path.join(out, path, name), "wb") as f:
                    f.write(text.encode("utf-8"))
    in_progress = export_in_progress(jobs, os.path.join(out, store.IN_PROGRESS_DIR))
    if in_progress:
        print(
            f"Unfinished jobs copied with their checkpoint to {out}/{store.IN_PROGRESS_DIR}: {', '.join(in_progress)}"
        )
    return out


@contextlib.contextmanager
def _workdir_of(config: Config, store_dir: str) -> Iterator[Config]:
    """``config`` as it is, or (with a store) a copy whose workdir is a temporary folder holding the
    store's records."""
    if not store_dir:
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="store_") as workdir:
        store.unpack(store_dir, workdir)
        copy = ml_collections.ConfigDict(config.to_dict())
        copy.workdir = workdir
        yield copy


def report(experiment: Experiment, config: Config, store_dir: str = "", report_dir: str = "") -> str:
    """Builds the report from the workdir or the store into ``report_dir`` (default
    ``<workdir>/report``); returns that folder."""
    out = report_dir or os.path.join(config.workdir, "report")
    with _workdir_of(config, store_dir) as source:
        jobs = experiment.jobs(source)
        if experiment.before_report is not None:
            experiment.before_report(source, jobs)
        os.makedirs(out, exist_ok=True)
        written = experiment.report(source, jobs, out)
        _write_provenance(jobs, out)
        return written


def _write_provenance(jobs: Sequence[Job], out: str) -> None:
    """``provenance.md`` beside the report: the commits, library versions and devices of its runs."""
    summaries = [job.summary() if job.done else None for job in jobs]
    lines = ["# What the runs of this report were made with", "", *tables.provenance_table(summaries), ""]
    with open(os.path.join(out, tables.PROVENANCE_FILE), "w") as f:
        f.write("\n".join(lines))


def main(
    experiment: Experiment,
    config: Config,
    mode: str = "all",
    shard: str = "0/1",
    store_dir: str = "",
    report_dir: str = "",
    job_patterns: Sequence[str] = (),
) -> None:
    """Runs ``mode`` (one of ``MODES``; see the module docstring) of ``experiment``.

    Args:
      experiment: the experiment.
      config: its grid config (a preset of its config file).
      mode: ``run``, ``report``, ``export`` or ``all``.
      shard: ``"i/n"``: train only jobs ``i, i + n, ...``.
      store_dir: a results store folder (``results/<experiment>``): the records to continue
        from (``run``, ``all``), to write to (``export``) or to report on (``report``).
      report_dir: where the report goes (default ``<workdir>/report``).
      job_patterns: train only the jobs whose name matches one of these shell patterns.

    Raises:
      ValueError: an unknown mode, a malformed shard, or a job pattern that matches no job.
    """
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}.")
    index, count = parse_shard(shard)
    if mode in ("run", "all"):
        if store_dir:
            store.unpack(store_dir, config.workdir, overwrite=False)
            store.restore_in_progress(store_dir, config.workdir)
        experiment.train(config, index, count, job_patterns)
    if mode == "export":
        print(f"Records of the finished runs: {export(experiment, config, store_dir)}")
    if mode in ("report", "all"):
        out = report(experiment, config, store_dir if mode == "report" else "", report_dir)
        with open(os.path.join(out, experiment.report_file)) as f:
            print(f.read())
        print(f"Report: {out}")


def run_from_command_line(experiment: Experiment) -> None:
    """The driver's command line: ``--config``, ``--mode``, ``--shard``, ``--jobs``, ``--store``, ``--report_dir``.

    The flags are defined here, when a driver runs as a script, so that tests and other drivers can
    import any number of driver modules.
    """
    flags.DEFINE_string(
        "store",
        "",
        "A results store folder (results/<experiment>): continue from it (run), write to it (export), "
        "report on it (report).",
    )
    flags.DEFINE_string("report_dir", "", "Where the report goes (default <workdir>/report).")
    flags.DEFINE_list(
        "jobs", [], "Train only the jobs whose name matches one of these shell patterns, e.g. 'swag/*,sgd/*/seed0'."
    )
    cli.run_grid(
        lambda config, mode, shard: main(
            experiment, config, mode, shard, flags.FLAGS.store, flags.FLAGS.report_dir, flags.FLAGS.jobs
        ),
        experiment.default_config,
        MODES,
        "Train jobs, export their records, write the report, or train then report.",
    )
