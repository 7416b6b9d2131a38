"""Preemption: SIGTERM and Ctrl-C stop the loop at a step boundary with a checkpoint.

Cluster schedulers and TPU pods send SIGTERM some time before they kill a job. One process: the
first SIGTERM or SIGINT sets a flag; the loop finishes the step it is in, saves a checkpoint (with
the step metrics not yet logged) and raises :class:`TrainingPreempted`, which the command-line
drivers turn into exit code :data:`PREEMPTED_EXIT_CODE`. A second Ctrl-C interrupts at once (the
default handler is back after the first). Several processes (``jax.distributed``): JAX's coordination service
receives the notice and :func:`jax.experimental.multihost_utils.reached_preemption_sync_point`
makes every host stop at the same step, so that all of them save that step.
"""

import logging
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL of sysexits.h: "temporary failure, the user is invited to retry". A scheduler that
# requeues on this code gets a run that resumes from the checkpoint written on the way out.
PREEMPTED_EXIT_CODE = 75

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

logger = logging.getLogger(__name__)


class TrainingPreempted(Exception):
    """The run stopped early on SIGTERM/SIGINT after saving a checkpoint at :attr:`step`."""

    def __init__(self, step: int, signal_name: str, workdir: str):
        self.step = step
        self.signal_name = signal_name
        super().__init__(
            f"{signal_name} received: stopped after step {step} with a checkpoint in {workdir}; "
            f"run the same command again to resume (exit code {PREEMPTED_EXIT_CODE})."
        )


def _multi_process() -> bool:
    return jax.process_count() > 1


class PreemptionWatcher:
    """Context manager that records SIGTERM/SIGINT and tells the loop when to stop.

    Handlers are installed only in the main thread and only for one process; the previous
    handlers come back on exit. :meth:`should_stop` is called once per step.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._warned = False

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.signal_name = signal.Signals(signum).name
        for sig in _SIGNALS:  # a second signal takes the default action (e.g. Ctrl-C twice)
            signal.signal(sig, self._previous.get(sig, signal.SIG_DFL))

    def __enter__(self) -> "PreemptionWatcher":
        if not _multi_process() and threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def should_stop(self, step: int) -> bool:
        """True when the run must save and stop after ``step`` (the same step on every host)."""
        if not _multi_process():
            return self.signal_name is not None
        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as err:  # jax.distributed started without its preemption service
            if not self._warned:
                logger.warning("Preemption notices are not handled across hosts: %s", err)
                self._warned = True
            return False
        if reached:
            self.signal_name = "SIGTERM"
        return reached
