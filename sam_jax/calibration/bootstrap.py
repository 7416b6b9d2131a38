"""Bootstrap confidence intervals for any metric (Efron & Tibshirani 1993, percentile method)."""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class BootstrapInterval(NamedTuple):
    """A point estimate and its percentile bootstrap interval."""

    estimate: jax.Array  # the metric on the full data
    lower: jax.Array  # (1 - confidence) / 2 quantile of the bootstrap replicates
    upper: jax.Array  # (1 + confidence) / 2 quantile of the bootstrap replicates


def bootstrap_ci(
    metric_fn: Callable[..., jax.Array],
    *arrays: jax.Array,
    num_samples: int = 1000,
    confidence: float = 0.95,
    key: jax.Array,
) -> BootstrapInterval:
    """Percentile bootstrap interval of ``metric_fn(*arrays)``, resampling examples jointly.

    Each replicate draws ``N`` row indices uniformly with replacement and evaluates
    ``metric_fn(*(a[idx] for a in arrays))``; replicates run sequentially under ``lax.map`` so
    memory is that of one evaluation. Bind other arguments first, e.g.
    ``bootstrap_ci(functools.partial(ece, num_bins=15), probs, labels, key=key)``.

    Args:
      metric_fn: jit-able function of the arrays returning a scalar.
      *arrays: arrays sharing the leading (example) dimension ``N``.
      num_samples: number of bootstrap replicates.
      confidence: coverage of the interval, in ``(0, 1)``.
      key: PRNG key.

    Returns:
      A :class:`BootstrapInterval`.
    """
    if not arrays:
        raise ValueError("bootstrap_ci: pass at least one array to resample.")
    num_examples = arrays[0].shape[0] if arrays[0].ndim else 0
    if num_examples < 1 or any(a.ndim == 0 or a.shape[0] != num_examples for a in arrays):
        raise ValueError(
            "bootstrap_ci: all arrays must share a non-empty leading dimension, got "
            f"shapes {[a.shape for a in arrays]}."
        )
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"bootstrap_ci: num_samples must be an int >= 1, got {num_samples!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence!r}.")

    def replicate(replicate_key):
        indices = jax.random.randint(replicate_key, (num_examples,), 0, num_examples)
        return metric_fn(*(a[indices] for a in arrays))

    replicates = jax.lax.map(replicate, jax.random.split(key, num_samples))
    tail = (1 - confidence) / 2
    lower, upper = jnp.quantile(replicates, jnp.array([tail, 1 - tail]))
    return BootstrapInterval(metric_fn(*arrays), lower, upper)
