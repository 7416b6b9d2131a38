"""Atomic Orbax checkpoints of the :class:`TrainState`.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a run killed
at any moment (even by SIGKILL) leaves only whole checkpoints behind; restore takes the newest.
"""
import os
import shutil
from typing import Optional

import jax
import orbax.checkpoint as ocp

from sam_jax.training.state import TrainState


class Checkpointer:
    """Saves and restores the train state under ``<workdir>/checkpoints``.

    Args:
      workdir: the run directory.
      max_to_keep: newest checkpoints kept on disk.
    """

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> Optional[int]:
        """Step of the newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, state: TrainState) -> None:
        """Saves ``state`` under its step (asynchronously; :meth:`wait` blocks until written)."""
        step = int(jax.device_get(state.step))
        if step not in self._manager.all_steps():
            self._manager.save(step, args=ocp.args.StandardSave(state))

    def restore(self, target: TrainState, step: Optional[int] = None) -> TrainState:
        """The checkpoint at ``step`` (default: newest), with the structure and dtypes of ``target``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {self.directory} to resume from.")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        return TrainState(*self._manager.restore(step, args=ocp.args.StandardRestore(abstract)))

    def wait(self) -> None:
        """Blocks until pending saves are on disk."""
        self._manager.wait_until_finished()

    def clear(self) -> None:
        """Deletes every checkpoint (a fresh run in a used directory)."""
        self.wait()
        self._manager.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        self.__init__(os.path.dirname(self.directory))

    def close(self) -> None:
        self.wait()
        self._manager.close()
