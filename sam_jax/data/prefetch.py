"""Overlapping batch preparation and host-to-device copies with the training step."""

import queue
import threading
from typing import Any, Iterable, Iterator, NamedTuple

import jax

# How often a blocked producer checks whether the consumer went away.
_POLL_SECONDS = 0.1


class _Failure(NamedTuple):
    error: BaseException  # raised by the source iterator, re-raised in the consumer


def prefetch_to_device(
    iterator: Iterable[Any], size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> Iterator[Any]:
    """Yields the items of ``iterator`` already on device, ``size`` of them prepared ahead.

    A background thread pulls items (pytrees of arrays, e.g. batches), calls
    ``jax.device_put(item, sharding)`` and queues the result, while the caller's step runs:
    NumPy gathers and ``device_put`` release the GIL, so the input pipeline overlaps compute.
    Unlike ``flax.jax_utils.prefetch_to_device`` this is not tied to ``pmap``; pass a
    ``NamedSharding`` to split batches over a mesh. An exception in ``iterator`` is re-raised
    to the caller; abandoning the returned iterator stops the thread.

    Args:
      iterator: yields pytrees of NumPy or JAX arrays.
      size: number of items kept ready on device (memory: ``size`` batches).
      sharding: where to put each item; ``None`` is the default device.

    Returns:
      An iterator over the same items as ``jax.Array`` pytrees, in the same order.

    Raises:
      ValueError: if ``size`` is not positive.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be at least 1, got {size}.")
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                put(jax.device_put(item, sharding))
            put(end)
        except BaseException as err:  # pylint: disable=broad-except  # handed to the consumer
            put(_Failure(err))

    def consume() -> Iterator[Any]:
        thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
        thread.start()
        try:
            while True:
                item = ready.get()
                if item is end:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()

    return consume()
