"""The errors a run ends with when it fails, each naming what was kept on disk and the way out.

A diverged run keeps its last good checkpoint (the loop saves only states that are finite with a
finite loss); a run that ran out of disk space keeps its newest complete checkpoint and resumes from
it when the same command runs again.
"""

import os

from sam_jax.training.checkpoint import Checkpointer
from sam_jax.training.workdir import DiskFullError


class TrainingDivergedError(FloatingPointError):
    """The training loss or parameters became NaN or infinite; the last good checkpoint is kept.

    Attributes:
      kept_step: the step of the checkpoint kept on disk (None when none was saved).
    """

    def __init__(self, message: str, kept_step: int | None = None):
        super().__init__(message)
        self.kept_step = kept_step


def diverged(step: int, what: str, checkpointer: Checkpointer) -> TrainingDivergedError:
    """The error for a run that diverged at ``step`` (``what`` went non-finite), naming the checkpoint kept."""
    checkpointer.wait()
    last = checkpointer.latest_step()
    kept = (
        f"The last good checkpoint (step {last}) is kept in {checkpointer.directory}"
        if last is not None
        else "No checkpoint was saved before it"
    )
    return TrainingDivergedError(
        f"{what} at step {step}: the run diverged (the inputs were checked at start: finite images, "
        f"labels in range, so they are not the cause). {kept}; lower optimizer.learning_rate "
        f"(or rho) and start again.",
        kept_step=last,
    )


def disk_full(workdir: str, cause: BaseException) -> DiskFullError:
    """The error for a write that failed for lack of space, naming the newest complete checkpoint."""
    kept = "No checkpoint had been written"
    if os.path.isdir(os.path.join(workdir, "checkpoints")):  # opening a manager creates the folder otherwise
        checkpointer = Checkpointer(workdir)
        try:
            steps = checkpointer.all_steps()
        finally:
            checkpointer.close()
        if steps:
            kept = f"The newest complete checkpoint, step {steps[-1]} in {checkpointer.directory}, is kept"
    return DiskFullError(
        f"Out of disk space while writing the run in {workdir!r}: {cause}. {kept}; free some space "
        "(or copy the workdir to a disk that has it) and run the same command again to resume."
    )
