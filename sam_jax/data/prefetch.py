"""Overlapping batch preparation and host-to-device copies with the training step.

The producer thread is always stopped and joined before the prefetcher is done with: when the
items run out, on :meth:`DevicePrefetcher.close` (``with`` block, ``break``, exception), and at
interpreter exit for a prefetcher that was abandoned. A daemon thread left inside
``jax.device_put`` while Python finalises is killed by a forced unwind through XLA's C++ frames,
and the process aborts (``FATAL: exception not rethrown``) after the run had finished; joining the
thread first removes that race.
"""

import atexit
import logging
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import jax

logger = logging.getLogger(__name__)

# How often a blocked producer checks whether the consumer went away.
_POLL_SECONDS = 0.05
# Upper bound on the wait for the producer when closing: one item's device_put plus a poll.
JOIN_TIMEOUT_SECONDS = 30.0

_live: "weakref.WeakSet[DevicePrefetcher]" = weakref.WeakSet()


class _Failure(NamedTuple):
    error: BaseException  # raised by the source iterator, re-raised in the consumer


_END = object()


def _to_device(item: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """``item`` on the devices of ``sharding``; with several processes, ``item`` is this process's part."""
    if sharding is None:
        return jax.device_put(item)
    # One process: jax.device_put. Several: each process holds only the rows of its own devices.
    return jax.make_array_from_process_local_data(sharding, item)


class DevicePrefetcher(Iterator[Any]):
    """Iterator over device-resident items prepared ahead by one background thread.

    Built by :func:`prefetch_to_device`. Use it in a ``with`` block (or call :meth:`close`) so
    that the thread is joined as soon as the consumer stops early.
    """

    def __init__(self, iterator: Iterable[Any], size: int, sharding: jax.sharding.Sharding | None):
        self._source = iter(iterator)
        self._sharding = sharding
        self._ready: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, name="prefetch_to_device", daemon=True)
        _live.add(self)
        self._thread.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _produce(self) -> None:
        try:
            for item in self._source:
                if self._stop.is_set():
                    return
                self._put(_to_device(item, self._sharding))
            self._put(_END)
        except BaseException as err:  # pylint: disable=broad-except  # handed to the consumer
            self._put(_Failure(err))

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        item = self._ready.get()
        if item is _END or isinstance(item, _Failure):
            self.close()
            if item is _END:
                raise StopIteration
            raise item.error
        return item

    def close(self, timeout: float = JOIN_TIMEOUT_SECONDS) -> None:
        """Stops the producer and joins it (at most ``timeout`` seconds); safe to call twice."""
        self._finished = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("prefetch_to_device: the producer thread did not stop within %.0f s.", timeout)
        else:
            _live.discard(self)

    @property
    def thread_alive(self) -> bool:
        """Whether the producer thread is still running (False once closed)."""
        return self._thread.is_alive()

    def __enter__(self) -> "DevicePrefetcher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@atexit.register
def _join_abandoned_prefetchers() -> None:
    """Joins producers whose consumer neither finished nor closed them, before Python finalises."""
    for prefetcher in list(_live):
        prefetcher.close()


def prefetch_to_device(
    iterator: Iterable[Any], size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> DevicePrefetcher:
    """Yields the items of ``iterator`` already on device, ``size`` of them prepared ahead.

    A background thread pulls items (pytrees of arrays, e.g. batches), calls
    ``jax.device_put(item, sharding)`` and queues the result, while the caller's step runs:
    NumPy gathers and ``device_put`` release the GIL, so the input pipeline overlaps compute.
    Unlike ``flax.jax_utils.prefetch_to_device`` this is not tied to ``pmap``; pass a
    ``NamedSharding`` to split batches over a mesh. In a multi-process run (``jax.distributed``)
    whose sharding spans the devices of every process, each item holds only this process's part
    of the global arrays (the rows its devices hold, e.g. from ``train_batches(...,
    process_rows=...)``), and ``jax.make_array_from_process_local_data`` assembles the global
    ``jax.Array``; with one process that is ``jax.device_put``. An exception in ``iterator`` is re-raised
    to the caller. The thread is joined when the items run out, when the caller closes the
    prefetcher (``with prefetch_to_device(...) as batches:`` closes it on ``break`` and on
    exceptions), and at interpreter exit.

    Args:
      iterator: yields pytrees of NumPy or JAX arrays.
      size: number of items kept ready on device (memory: ``size`` batches).
      sharding: where to put each item; ``None`` is the default device. With several processes,
        each item is this process's part (see above).

    Returns:
      A :class:`DevicePrefetcher`: an iterator over the same items as ``jax.Array`` pytrees, in
      the same order, and a context manager.

    Raises:
      ValueError: if ``size`` is not positive.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be at least 1, got {size}.")
    return DevicePrefetcher(iterator, size, sharding)
