"""Timing helpers shared by the benchmarks: wall time of jitted work, waited for on the device."""

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def median_time(fn: Callable[[], Any], reps: int) -> float:
    """Median wall seconds of ``fn()`` over ``reps`` calls, after one warm-up call (compilation)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_steps(step: Callable, state: Any, batch: dict, num_steps: int) -> tuple[float, Any]:
    """Seconds per call of ``state, metrics = step(state, batch)`` over ``num_steps`` calls, and the state reached."""
    start = time.perf_counter()
    for _ in range(num_steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / num_steps, state
