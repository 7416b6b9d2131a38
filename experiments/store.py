"""The results store: the compact run records of one experiment in one compressed, append-friendly file.

A store is a folder (``results/<experiment>/``) holding

- ``runs.jsonl.gz``: one JSON line per run directory of the experiment's workdir,
  ``{"path": "<dir relative to the workdir>", "files": {"<name>": "<text>", ...}}``, holding every
  small text file of that directory (``config.json``, ``summary.json``, the reduced
  ``metrics.jsonl``, an evaluation such as ``table1_eval.json``); the grid's own files, such as a
  ``tuned.json`` at the top, form the line of path ``""``. The file is a series of gzip members:
  :func:`append_run` adds one member, and gzip readers see one stream. A later line for the same
  path replaces the earlier one.
- ``manifest.json``: the number of runs and files and the SHA-256 of every file's bytes, keyed by
  its path in the workdir; :func:`unpack` checks each file against it.
- ``in_progress/`` (optional): unfinished jobs with their newest checkpoint, laid out like the
  workdir (binary, so kept as folders; ``experiments.grid.export_in_progress`` writes it).

:func:`pack` turns a workdir of compact records into a store, :func:`append_run` adds one finished
run (:func:`append_runs` several), and :func:`unpack` writes the records back into a workdir, byte for byte, where
``--mode=report`` rebuilds the report and ``--mode=run`` continues the grid. What is kept of a
finished job is a :class:`Kept` (:func:`compact_records`); what is kept of an unfinished one,
its newest checkpoint (:func:`export_in_progress`).
"""

import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from experiments.grid import Job
from sam_jax.training import read_metrics
from sam_jax.training.writers import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE

STORE_FILE = "runs.jsonl.gz"
MANIFEST_FILE = "manifest.json"
IN_PROGRESS_DIR = "in_progress"
FORMAT = "sam_jax run store, version 1"
# Folders of a workdir that are not run records: checkpoints, reports, JAX's cache, exports.
SKIPPED_DIRS = frozenset({"checkpoints", "report", "in_progress", "compact", "jax_cache"})
SKIPPED_FILES = frozenset({".lock"})

RunFiles = dict[str, str]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _gzip_member(lines: Iterable[str]) -> bytes:
    """One gzip member holding ``lines`` (no timestamp or name, so equal records give equal bytes)."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0, filename="") as f:
        for line in lines:
            f.write(line.encode("utf-8"))
    return buffer.getvalue()


def _line(path: str, files: Mapping[str, str]) -> str:
    return json.dumps({"path": path, "files": dict(sorted(files.items()))}, ensure_ascii=False) + "\n"


def read_run_files(directory: str) -> RunFiles:
    """The text files directly inside ``directory`` (subfolders and lock files left out), by name."""
    files = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and name not in SKIPPED_FILES:
            with open(path, "rb") as f:
                files[name] = f.read().decode("utf-8")
    return files


def collect(workdir: str) -> dict[str, RunFiles]:
    """Every directory of ``workdir`` that holds files, as ``{relative path: files}`` in sorted order.

    Checkpoints, reports, caches and exports (``SKIPPED_DIRS``) are left out.
    """
    runs = {}
    for root, dirs, _ in os.walk(workdir):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        files = read_run_files(root)
        if files:
            path = os.path.relpath(root, workdir)
            runs["" if path == "." else path] = files
    return dict(sorted(runs.items()))


def read_store(store: str) -> dict[str, RunFiles]:
    """The runs of a store as ``{relative path: {file name: text}}`` (a later line replaces an earlier one).

    Raises:
      FileNotFoundError: ``store`` has no ``runs.jsonl.gz``.
    """
    path = os.path.join(store, STORE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; a store is made by --mode=export --store=<folder>.")
    runs = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            runs[record["path"]] = record["files"]
    return runs


def _write_manifest(store: str, runs: Mapping[str, RunFiles]) -> dict:
    hashes = {
        os.path.join(path, name): _sha256(text) for path, files in sorted(runs.items()) for name, text in files.items()
    }
    manifest = {"format": FORMAT, "store": STORE_FILE, "runs": len(runs), "files": len(hashes), "sha256": hashes}
    with open(os.path.join(store, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    return manifest


def write_store(store: str, runs: Mapping[str, RunFiles]) -> dict:
    """Writes ``runs`` as the store in ``store`` (replacing its records and manifest); returns the manifest."""
    os.makedirs(store, exist_ok=True)
    with open(os.path.join(store, STORE_FILE), "wb") as f:
        f.write(_gzip_member(_line(path, files) for path, files in sorted(runs.items())))
    return _write_manifest(store, runs)


def pack(workdir: str, store: str) -> dict:
    """Packs every run record of ``workdir`` (a grid's compact copy, or a workdir of compact records)
    into the store folder ``store``, replacing what it held; returns the manifest.

    Raises:
      FileNotFoundError: ``workdir`` holds no record.
    """
    runs = collect(workdir)
    if not runs:
        raise FileNotFoundError(f"{workdir} holds no run record to pack.")
    return write_store(store, runs)


def append_runs(store: str, runs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Adds runs (``{directory relative to the workdir: {file name: text}}``) to the store.

    The runs that are new or changed are written as one more gzip member, so the records already
    committed keep their bytes; a run already in the store is replaced (its later line wins). The
    manifest is rewritten.

    Returns:
      The paths of the runs written (none when the store already held them all).
    """
    os.makedirs(store, exist_ok=True)
    held = read_store(store) if os.path.exists(os.path.join(store, STORE_FILE)) else {}
    changed = {path: dict(files) for path, files in sorted(runs.items()) if held.get(path) != dict(files)}
    if changed:
        with open(os.path.join(store, STORE_FILE), "ab") as f:
            f.write(_gzip_member(_line(path, files) for path, files in changed.items()))
        _write_manifest(store, {**held, **changed})
    return list(changed)


def append_run(store: str, path: str, files: Mapping[str, str]) -> None:
    """Adds one finished run (its directory relative to the workdir and its files); see :func:`append_runs`."""
    append_runs(store, {path: files})


def unpack(store: str, workdir: str, overwrite: bool = True) -> list[str]:
    """Writes the store's records into ``workdir`` (laid out as the grid), checked against the manifest.

    Args:
      store: the store folder.
      workdir: where to write; created when missing.
      overwrite: replace files that exist; when False, a run directory that already has a
        ``summary.json`` is left as it is (the workdir's own run wins).

    Returns:
      The relative paths of the run directories written.

    Raises:
      ValueError: a file's hash differs from the manifest's.
    """
    with open(os.path.join(store, MANIFEST_FILE)) as f:
        hashes = json.load(f)["sha256"]
    written = []
    for path, files in read_store(store).items():
        target = os.path.join(workdir, path)
        if not overwrite and os.path.exists(os.path.join(target, SUMMARY_FILE)):
            continue
        os.makedirs(target, exist_ok=True)
        for name, text in files.items():
            key = os.path.join(path, name)
            if hashes.get(key) != _sha256(text):
                raise ValueError(f"{store}: {key} does not match the manifest's SHA-256; the store is damaged.")
            with open(os.path.join(target, name), "wb") as f:
                f.write(text.encode("utf-8"))
        written.append(path)
    return written


def restore_in_progress(store: str, workdir: str) -> list[str]:
    """Copies the store's unfinished jobs (``in_progress/``, with their checkpoints) into ``workdir``
    for those whose directory there has no checkpoint yet; returns their relative paths."""
    source = os.path.join(store, IN_PROGRESS_DIR)
    restored = []
    for path in _run_dirs(source):
        target = os.path.join(workdir, path)
        if os.path.isdir(os.path.join(target, "checkpoints")):
            continue
        shutil.copytree(os.path.join(source, path), target, dirs_exist_ok=True)
        restored.append(path)
    return restored


def _run_dirs(root: str) -> Iterator[str]:
    """Directories under ``root`` that hold a ``config.json`` (relative to ``root``)."""
    if not os.path.isdir(root):
        return
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        if CONFIG_FILE in files:
            dirs[:] = []
            yield os.path.relpath(directory, root)


@dataclasses.dataclass(frozen=True)
class Kept:
    """What is kept of a finished job: files copied as they are (when present) and, of ``metrics.jsonl``,
    the keys of each record that ``metrics`` accepts (no ``metrics.jsonl`` when None)."""

    files: tuple[str, ...] = (CONFIG_FILE, SUMMARY_FILE)
    metrics: Callable[[str], bool] | None = None


def kept_keys(keys: Sequence[str]) -> Callable[[str], bool]:
    """A :class:`Kept` ``metrics`` rule that keeps exactly ``keys``."""
    wanted = frozenset(keys)
    return wanted.__contains__


def compact_records(jobs: Iterable[Job], workdir: str, keep: Callable[[Job], Kept]) -> dict[str, dict[str, str]]:
    """The compact records of the finished ``jobs``: ``{job directory relative to workdir: {file: text}}``.

    Each job keeps what ``keep(job)`` names; a metrics record keeps the accepted keys, and records
    left with nothing but the step are dropped.
    """
    records = {}
    for job in jobs:
        if not job.done:
            continue
        kept = keep(job)
        files = {}
        for name in kept.files:
            path = os.path.join(job.workdir, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    files[name] = f.read().decode("utf-8")
        if kept.metrics is not None and os.path.exists(os.path.join(job.workdir, METRICS_FILE)):
            lines = []
            for record in read_metrics(job.workdir):
                reduced = {k: v for k, v in record.items() if kept.metrics(k)}
                if len(reduced) > 1:
                    lines.append(json.dumps(reduced) + "\n")
            files[METRICS_FILE] = "".join(lines)
        records[os.path.relpath(job.workdir, workdir)] = files
    return records


CHECKPOINT_DIR = "checkpoints"
IN_PROGRESS_FILES = (CONFIG_FILE, METRICS_FILE)


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
