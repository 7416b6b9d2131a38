"""Per-batch classification losses computed from logits.

Every loss takes ``logits [B, K]`` and integer ``labels [B]`` and returns the mean over the batch,
or the weighted mean when a ``mask [B]`` (1 for real examples, 0 for padding) is given, so that a
padded final evaluation batch gives the exact full-data value.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import optax


def _masked_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean softmax cross-entropy -log p_y."""
    return _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), mask)


def mse(logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Mean squared error to one-hot targets, 0.5 * ||f(x) - e_y||^2 summed over classes.

    The MSE variant of calibration-follows-curvature.txt (Appendix D): the network outputs are
    regressed on one-hot labels; predictions are read as softmax(outputs) for calibration.
    """
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return _masked_mean(0.5 * jnp.sum((logits - targets) ** 2, axis=-1), mask)
