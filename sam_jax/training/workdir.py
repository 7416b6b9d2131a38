"""What the loop may do with a run directory: check it is writable, resume it, or refuse.

A run directory is never wiped silently. When it already holds a run (a ``config.json``), the loop
resumes it if the saved config equals the new one up to the fields that may change between the
two halves of a run (:data:`RESUMABLE_FIELDS`); otherwise it stops with one error that lists the
differing fields and says how to go on. ``overwrite=True`` is the only way to delete a run.

A run directory has one writer at a time: :func:`workdir_lock` holds an ``flock`` on
``<workdir>/.lock`` (which names the holder's pid, host and command) while a run trains, and a
second process that asks for it fails at once with :class:`WorkdirBusyError` naming the holder.
The operating system drops the lock when its holder exits, killed or not, so a lock left by a
dead process never blocks a resume.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import ml_collections

from sam_jax.training.config import with_defaults
from sam_jax.training.writers import CONFIG_FILE

# Fields (or whole blocks) that may differ between a run and its resumption: the length of training
# (a run can be extended), how it is resumed, how it reports progress, and how its processes join
# (each process of a distributed run has its own process_id, and a run may resume on other hosts).
RESUMABLE_FIELDS = (
    "num_epochs",
    "num_steps",
    "resume",
    "overwrite",
    "progress_bar",
    "workdir",
    "distributed",
    "data.read_threads",
    "donate_state",
)

# Everything the loop writes into a run directory.
RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "summary.json", "checkpoints", "sharpness.png")


# The lock file of a run directory (never deleted: removing a lock file that others may have
# opened would let two processes hold "the" lock at once).
LOCK_FILE = ".lock"

logger = logging.getLogger(__name__)


class WorkdirError(ValueError):
    """The run directory cannot be used as asked (unwritable, or holds a different run)."""


class WorkdirBusyError(WorkdirError):
    """Another live process holds the run directory's lock (it is training there)."""


class DiskFullError(WorkdirError):
    """A write into the run directory failed for lack of space; complete checkpoints are kept."""


# Raised by writes on a full disk or over quota (errno), or worded so by a library that re-raises.
_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_OUT_OF_SPACE_WORDS = ("No space left on device", "Disk quota exceeded")


def out_of_space_cause(err: BaseException) -> BaseException | None:
    """The exception in ``err``'s chain (causes and contexts) that reports a full disk, or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _OUT_OF_SPACE_ERRNOS:
            return err
        if any(words in str(err) for words in _OUT_OF_SPACE_WORDS):
            return err
        err = err.__cause__ or err.__context__
    return None


# Locks this process holds: real path of the lock file -> its open descriptor. A process may take
# the lock of a directory it already holds (a grid job claimed, then trained): the inner request
# succeeds and the outermost one releases it.
_HELD: dict[str, int] = {}


def _holder(fd: int) -> str:
    """Who holds the lock, from what the holder wrote into the lock file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if "pid" not in info:
        return "another process (it has not written its pid yet)"
    return (
        f"pid {info['pid']} on host {info.get('host', '?')}, since {info.get('since', '?')}, "
        f"running {info.get('command', '?')!r}"
    )


def _try_lock(path: str) -> int | None:
    """An open descriptor of ``path`` holding its exclusive lock, or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as err:  # a file system without flock (some network mounts): run unlocked
        logger.warning("Cannot lock %s (%s); nothing stops a second process from writing there.", path, err)
        return fd
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    return fd


@contextlib.contextmanager
def try_workdir_lock(workdir: str) -> Iterator[bool]:
    """Holds the writer lock of ``workdir`` for the duration if it is free; yields whether it was.

    Creates ``workdir``. Re-entrant within a process. The lock is released on exit, and by the
    operating system when the process dies.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
    if path in _HELD:
        yield True
        return
    fd = _try_lock(path)
    if fd is None:
        yield False
        return
    _HELD[path] = fd
    try:
        yield True
    finally:
        del _HELD[path]
        os.ftruncate(fd, 0)  # no stale holder left in the file
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def workdir_lock(workdir: str, *, active: bool = True) -> Iterator[None]:
    """Makes this process the one writer of ``workdir`` for the duration.

    Args:
      workdir: the run directory (created if missing).
      active: False on every process of a distributed run but the one that writes its files
        (they share the directory by design); they take no lock.

    Raises:
      WorkdirBusyError: another live process holds the lock; the message names it.
    """
    if not active:
        yield
        return
    with try_workdir_lock(workdir) as mine:
        if not mine:
            path = os.path.join(workdir, LOCK_FILE)
            fd = os.open(path, os.O_RDONLY)
            try:
                holder = _holder(fd)
            finally:
                os.close(fd)
            raise WorkdirBusyError(
                f"workdir {workdir!r} is in use by {holder} (lock {path}). Two processes writing one "
                "run would duplicate its metrics and race on its checkpoints: wait for that run to end "
                "or stop it, then run this command again (it resumes), or pick another --config.workdir."
            )
        yield


def check_writable(workdir: str) -> None:
    """Creates ``workdir`` (with its parents) and checks that a file can be written in it.

    Raises:
      WorkdirError: the directory cannot be created or written, with the reason from the OS.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise WorkdirError(
            f"Cannot write to workdir {workdir!r}: {err.strerror or err}. Pick a directory you can "
            "write (--config.workdir=...); nothing was trained."
        ) from err


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def _resumable(key: str) -> bool:
    return any(key == field or key.startswith(f"{field}.") for field in RESUMABLE_FIELDS)


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """Fields (dotted names) whose values differ, ignoring :data:`RESUMABLE_FIELDS` and their sub-fields.

    Fields that ``saved`` predates count at their defaults, so a run saved before a field existed
    resumes unless the field is set to something else.
    """
    old = _flatten(with_defaults(saved))
    new = _flatten(json.loads(config.to_json_best_effort()))
    return sorted(
        f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
        for key in set(old) | set(new)
        if not _resumable(key) and old.get(key) != new.get(key)
    )


def saved_config(workdir: str) -> dict[str, Any] | None:
    """The config saved in ``workdir`` as a JSON tree, or None when the directory holds no run."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def remove_run(workdir: str) -> None:
    """Deletes the files a run wrote in ``workdir`` (and nothing else)."""
    for name in RUN_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, *, may_delete: bool = True) -> bool:
    """Applies the re-use policy to ``workdir`` before anything is trained.

    Every process of a distributed run calls it on the shared directory and reaches the same
    decision; only the one that writes the run's files (``may_delete``) deletes an old run, and no
    process may write there before all of them have returned (the loop waits at a barrier).

    Args:
      config: the run config.
      workdir: the run directory.
      may_delete: whether this process deletes the old run when ``config.overwrite`` (False on
        every process of a distributed run but process 0).

    Returns:
      True when ``workdir`` holds a run with the same config that should be resumed; False for a
      fresh start (an empty directory, or one just cleared because ``config.overwrite``).

    Raises:
      WorkdirError: the directory is not writable, or holds a run that this config may not
        continue (a different config, or ``resume=False``).
    """
    check_writable(workdir)
    if config.overwrite:
        if may_delete and os.path.exists(os.path.join(workdir, CONFIG_FILE)):
            remove_run(workdir)
        return False
    saved = saved_config(workdir)
    if saved is None:
        return False
    how = "To keep it, pick another --config.workdir; to delete it and start afresh, add --config.overwrite=True."
    if not config.resume:
        raise WorkdirError(f"workdir {workdir!r} already holds a run and resume=False. {how}")
    differences = config_differences(saved, config)
    if differences:
        raise WorkdirError(
            f"workdir {workdir!r} holds a run with a different config, so it cannot be resumed:\n  "
            + "\n  ".join(differences)
            + f"\nTo resume it, run with its saved config ({os.path.join(workdir, CONFIG_FILE)}). "
            + how
        )
    return True
