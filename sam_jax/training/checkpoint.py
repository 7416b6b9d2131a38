"""Atomic Orbax checkpoints of the :class:`TrainState`, and a restore that survives a bad one.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run killed
at any moment (even by SIGKILL) leaves only whole checkpoints behind. A checkpoint damaged after the
fact (a file cut in half by a full disk or a bad copy) is caught at restore: the newest one that
reads back whole and finite is used, with a warning for each one skipped.

In a multi-process run (``jax.distributed``) every process calls :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` on the same directory, which all of them must share: Orbax writes the
arrays from the processes that hold them and commits (renames) the checkpoint from process 0 once
all have written. The state is replicated, so every process reads the same values and makes the
same choice of the checkpoint to fall back to.

A save is asynchronous, yet the train step may donate the state's buffers at once
(``sam_jax.training.steps.donating_train_step``): :meth:`Checkpointer.save` returns only after
Orbax has copied every array of the state to host memory, and the files are written from those
copies in the background. That is what Orbax (0.12) does when no limit on concurrent
device-to-host bytes (``save_device_host_concurrent_gb``) is set, as here: the copies are made and
waited for inside ``CheckpointManager.save`` (``_serialize_arrays`` in
``orbax/checkpoint/_src/serialization/jax_array_handlers.py`` calls ``transfer_arrays_to_host``,
which blocks; its docs call this the ``SYNCHRONOUS`` transfer priority, "never corrupted by
concurrent updates or donations"). ``tests/test_checkpoint_topology.py`` checks it by deleting
the state's arrays as soon as ``save`` returns.

A checkpoint restores onto any devices: each array takes the sharding of the target's leaf, so a
state saved from 8 devices restores onto 2 or 1 (``tests/test_checkpoint_topology.py``). A target
leaf without a sharding (a NumPy array, a ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``) is
restored replicated over every device, as the loop places the state; left to Orbax, it would take
the sharding saved with the checkpoint, which names the devices of the run that wrote it, and on
another device count fail ("Topology mismatch" or "The available devices are different").
"""

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sam_jax.training.state import TrainState

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in the directory could be restored."""


def all_finite(tree: object) -> jax.Array:
    """True when every floating-point leaf of ``tree`` is finite (a traced boolean scalar)."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _restore_target(target: object) -> object:
    """``target`` as shapes, dtypes and shardings for Orbax to restore into.

    The sharding of each ``jax.Array`` (or sharded ``jax.ShapeDtypeStruct``) leaf is kept; a leaf
    without one (NumPy, an unsharded ``jax.ShapeDtypeStruct``) gets the replicated sharding over
    every device (the loop's placement of the state), so that no leaf falls back to the sharding
    saved in the checkpoint (module docstring).
    """
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())

    def leaf_target(leaf: object) -> object:
        abstract = ocp.utils.to_shape_dtype_struct(leaf)
        if isinstance(abstract, jax.ShapeDtypeStruct) and abstract.sharding is None:
            return jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=replicated)
        return abstract

    return jax.tree_util.tree_map(leaf_target, target)


class Checkpointer:
    """Saves and restores the train state under ``<workdir>/checkpoints``.

    Args:
      workdir: the run directory.
      max_to_keep: newest checkpoints kept on disk (at least 2, so that a damaged newest one has
        a predecessor to fall back to).
    """

    def __init__(self, workdir: str, max_to_keep: int = 2):
        if max_to_keep < 2:
            raise ValueError(f"max_to_keep={max_to_keep} must be >= 2 to allow falling back.")
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of all complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, state: TrainState, custom_metadata: Mapping[str, Any] | None = None) -> None:
        """Saves ``state`` under its step (asynchronously; :meth:`wait` blocks until written).

        Returns once the state is copied to host memory: the caller may then donate or delete its
        arrays (module docstring). The caller guarantees that ``state`` is good (finite, with a
        finite loss): the loop checks it before calling.

        Args:
          state: the train state.
          custom_metadata: JSON-serialisable values saved with the checkpoint (Orbax's step
            metadata), read back by :meth:`custom_metadata`.
        """
        step = int(jax.device_get(state.step))
        if step not in self._manager.all_steps():
            self._manager.save(step, args=ocp.args.StandardSave(state), custom_metadata=dict(custom_metadata or {}))

    def custom_metadata(self, step: int) -> dict[str, Any]:
        """What :meth:`save` stored with the checkpoint of ``step`` ({} for none). Call it after
        :meth:`restore`, which tells Orbax how the checkpoint's items are read."""
        return dict(self._manager.metadata(step).custom_metadata or {})

    def _restore_step(self, target: TrainState, step: int) -> TrainState:
        abstract = _restore_target(target)
        state = TrainState(*self._manager.restore(step, args=ocp.args.StandardRestore(abstract)))
        if int(jax.device_get(state.step)) != step:
            raise ValueError(f"holds step {int(jax.device_get(state.step))}, not {step}")
        if not bool(all_finite(state)):
            raise ValueError("holds non-finite values")
        return state

    def restore(self, target: TrainState, step: int | None = None) -> TrainState:
        """The checkpoint at ``step``, with the structure, dtypes and shardings of ``target``.

        ``target`` may live on other devices than the run that saved the checkpoint (another
        device count, another mesh); its leaves without a sharding restore replicated
        (:func:`_restore_target`). Its arrays may have been donated (deleted): only their shapes,
        dtypes and shardings are read.

        With ``step=None``, the newest checkpoint that restores whole and finite; each newer one
        that fails (truncated or corrupt files, wrong step, NaN) is skipped with a warning.

        Raises:
          FileNotFoundError: there is no checkpoint (or none at ``step``).
          CheckpointError: no checkpoint could be restored; the message lists each one's error.
        """
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise FileNotFoundError(f"No checkpoint of step {step} in {self.directory} (it has {steps}).")
            return self._restore_step(target, step)
        if not steps:
            raise FileNotFoundError(f"No checkpoint in {self.directory} to resume from.")
        errors = []
        for candidate in reversed(steps):
            try:
                state = self._restore_step(target, candidate)
            except Exception as err:  # pylint: disable=broad-except  # any damage: try the previous
                errors.append(f"step {candidate}: {type(err).__name__}: {str(err)[:300]}")
                logger.warning(
                    "Checkpoint of step %d in %s cannot be restored (%s); falling back to the previous one.",
                    candidate,
                    self.directory,
                    errors[-1],
                )
                continue
            return state
        raise CheckpointError(f"No checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(errors))

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and stops Orbax's background threads."""
        self.wait()
        self._manager.close()
