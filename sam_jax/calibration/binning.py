"""Assignment of confidences to calibration bins.

Equal-width bins are ``(lo, hi]`` intervals over ``(0, 1]``; a confidence of 0 falls in the first
bin, so every example lands in exactly one bin. The edges ``k / M`` are rounded once, from float64
to the confidences' dtype, so that a confidence stored as exactly ``float32(k / M)`` lies on edge
``k`` and belongs to bin ``k`` (1-based), the bin whose upper edge it is; 1.0 belongs to bin ``M``.
(Edges built by ``linspace`` in float32, or a bin index computed as ``floor(c * M)``, put some of
these edge values one bin low; see docs/calibration.md.)
"""

import jax
import jax.numpy as jnp
import numpy as np


def equal_width_edges(num_bins: int, dtype: jnp.dtype) -> jax.Array:
    """Interior edges ``[k / M for k = 1..M-1]``, computed in float64 and rounded to ``dtype``.

    Args:
      num_bins: number of bins ``M``.
      dtype: dtype of the confidences that will be compared with the edges.

    Returns:
      ``[M - 1]`` array of edges.
    """
    return jnp.asarray(np.arange(1, num_bins, dtype=np.float64) / num_bins, dtype=dtype)


def equal_width_bins(confidence: jax.Array, num_bins: int) -> jax.Array:
    """0-based index of the ``(lo, hi]`` bin of each confidence (any shape).

    Args:
      confidence: values in ``[0, 1]``.
      num_bins: number of equal-width bins ``M``.

    Returns:
      int32 array of the shape of ``confidence`` with values in ``[0, M - 1]``: the number of
      interior edges strictly below the confidence.
    """
    edges = equal_width_edges(num_bins, confidence.dtype)
    return jnp.sum(confidence[..., None] > edges, axis=-1, dtype=jnp.int32)


def equal_mass_bins_sorted(sorted_confidence: jax.Array, sorted_weights: jax.Array, num_bins: int) -> jax.Array:
    """Equal-mass bin index of each example, for confidences sorted in increasing order.

    Example ``i`` goes to bin ``floor(M * W_below(c_i) / W)``, where ``W_below(c)`` is the total
    weight of the examples with confidence strictly below ``c`` and ``W`` the total weight. With
    unit weights each bin holds ``N / M`` examples (up to rounding), tied confidences share a bin
    (so the result does not depend on the order of the examples), and zero weights change nothing.

    Args:
      sorted_confidence: ``[N]`` confidences in increasing order.
      sorted_weights: ``[N]`` non-negative weights in the same order.
      num_bins: number of bins ``M``.

    Returns:
      ``[N]`` int32 bin indices in ``[0, M - 1]``, non-decreasing.
    """
    n = sorted_confidence.shape[0]
    weight_before = jnp.cumsum(sorted_weights) - sorted_weights
    position = jnp.arange(n)
    starts_group = jnp.concatenate([jnp.array([True]), sorted_confidence[1:] != sorted_confidence[:-1]])
    group_start = jax.lax.cummax(jnp.where(starts_group, position, 0))
    weight_below = weight_before[group_start]
    # Compare M * W_below with k * W instead of dividing: both sides are exact for integer weights
    # below 2**24 / M, so an example whose rank is exactly k * N / M is never rounded down a bin.
    thresholds = jnp.arange(1, num_bins, dtype=sorted_weights.dtype) * jnp.sum(sorted_weights)
    return jnp.sum(weight_below[:, None] * num_bins >= thresholds, axis=-1, dtype=jnp.int32)
