"""What the loop may do with a run directory: check it is writable, resume it, or refuse.

A run directory is never wiped silently. When it already holds a run (a ``config.json``), the loop
resumes it if the saved config equals the new one up to the fields that may change between the
two halves of a run (:data:`RESUMABLE_FIELDS`); otherwise it stops with one error that lists the
differing fields and says how to go on. ``overwrite=True`` is the only way to delete a run.
"""

import json
import os
import shutil
import uuid
from typing import Any, Optional

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


class WorkdirError(ValueError):
    """The run directory cannot be used as asked (unwritable, or holds a different run)."""


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


def saved_config(workdir: str) -> Optional[dict[str, Any]]:
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
