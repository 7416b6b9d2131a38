"""Binned calibration errors and proper scores computed from predicted probabilities.

All functions take ``probs [N, K]`` (rows on the simplex), integer ``labels [N]`` in ``[0, K)``
and an optional ``mask [N]`` of example weights, and return a scalar. They are pure and already
jitted (``num_bins`` static), so they are fast when called eagerly and inline inside a caller's
``jit``. Binned errors follow Tan et al. (2025), Sec. 3.1:

    ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)| = sum_b |sum_{i in B_b} (c_i - a_i)| / n,

written in the second form so that no per-bin division is needed; with weights, ``n`` and
``|B_b|`` are sums of weights. Bins are described in :mod:`sam_jax.calibration.binning`.

References:
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
  Morosini, Gjika, Poggio & Beneventano, 2026. Too Sharp, Too Sure: When Calibration Follows
  Curvature. arXiv:2604.20614.
  Möllenhoff & Khan, 2022. SAM as an Optimal Relaxation of Bayes. ICLR 2023, arXiv:2210.01620.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sam_jax.calibration import _common
from sam_jax.calibration.binning import equal_mass_bins_sorted, equal_width_bins
from sam_jax.losses.classification import masked_mean

# The classwise ECE bins all N * K probabilities; it does so in row chunks of about this many
# elements so that its temporaries stay near 16 MiB instead of several copies of the input.
_CLASSWISE_CHUNK_ELEMENTS = 1 << 22


def _top_label_gaps(probs: jax.Array, labels: jax.Array, mask: jax.Array | None):
    """Top-label confidence, weighted gap ``w * (confidence - correct)`` and weights."""
    dtype = _common.float_dtype(probs)
    confidence, prediction = _common.top_label(probs.astype(dtype))
    correct = (prediction == labels).astype(dtype)
    weights = _common.example_weights(mask, labels.shape[0], dtype)
    return confidence, weights * (confidence - correct), weights


def _sum_abs_bin_gaps(gaps: jax.Array, bins: jax.Array, num_bins: int) -> jax.Array:
    return jnp.sum(jnp.abs(jax.ops.segment_sum(gaps, bins, num_segments=num_bins)))


@_common.checked_jit(static_argnames=("num_bins",))
def ece(probs: jax.Array, labels: jax.Array, num_bins: int = 15, *, mask: jax.Array | None = None) -> jax.Array:
    """Top-label expected calibration error with equal-width bins (Guo et al. 2017).

    Tan et al. (2025, arXiv:2505.23866), Sec. 3.1 (``M = 15``); Morosini et al. (2026,
    arXiv:2604.20614), App. B.1 (bins ``(a_{m-1}, a_m]``).

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      num_bins: number of equal-width bins ``M`` over ``(0, 1]``.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar ECE in ``[0, 1]``.
    """
    _common.check_predictions("ece", probs, labels, mask)
    _common.check_num_bins("ece", num_bins)
    confidence, gaps, weights = _top_label_gaps(probs, labels, mask)
    bins = equal_width_bins(confidence, num_bins)
    return _sum_abs_bin_gaps(gaps, bins, num_bins) / _common.safe_total(weights)


@_common.checked_jit(static_argnames=("num_bins",))
def adaptive_ece(
    probs: jax.Array, labels: jax.Array, num_bins: int = 15, *, mask: jax.Array | None = None
) -> jax.Array:
    """Top-label ECE with equal-mass bins (AdaECE; Nguyen & O'Connor 2015, Mukhoti et al. 2020).

    The "AdaECE" column of Tan et al. (2025, arXiv:2505.23866, Tables 2, 3, S9). Examples are
    sorted by confidence and cut into ``M`` bins of equal total weight; tied confidences share a bin (see
    :func:`~sam_jax.calibration.binning.equal_mass_bins_sorted`).

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      num_bins: number of equal-mass bins ``M``.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar adaptive ECE in ``[0, 1]``.
    """
    _common.check_predictions("adaptive_ece", probs, labels, mask)
    _common.check_num_bins("adaptive_ece", num_bins)
    confidence, gaps, weights = _top_label_gaps(probs, labels, mask)
    order = jnp.argsort(confidence)
    bins = equal_mass_bins_sorted(confidence[order], weights[order], num_bins)
    return _sum_abs_bin_gaps(gaps[order], bins, num_bins) / _common.safe_total(weights)


@_common.checked_jit(static_argnames=("num_bins",))
def max_calibration_error(
    probs: jax.Array, labels: jax.Array, num_bins: int = 15, *, mask: jax.Array | None = None
) -> jax.Array:
    """Maximum calibration error ``max_b |acc(B_b) - conf(B_b)|`` over non-empty equal-width bins.

    MCE of Naeini et al. (2015) / Guo et al. (2017), with the bins of :func:`ece`.

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      num_bins: number of equal-width bins ``M``.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar MCE in ``[0, 1]``; 0 when every bin is empty.
    """
    _common.check_predictions("max_calibration_error", probs, labels, mask)
    _common.check_num_bins("max_calibration_error", num_bins)
    confidence, gaps, weights = _top_label_gaps(probs, labels, mask)
    bins = equal_width_bins(confidence, num_bins)
    sums = jax.ops.segment_sum(gaps, bins, num_segments=num_bins)
    counts = jax.ops.segment_sum(weights, bins, num_segments=num_bins)
    nonempty = counts > 0
    return jnp.max(jnp.where(nonempty, jnp.abs(sums) / jnp.where(nonempty, counts, 1), 0))


@_common.checked_jit(static_argnames=("num_bins",))
def classwise_ece(
    probs: jax.Array, labels: jax.Array, num_bins: int = 15, *, mask: jax.Array | None = None
) -> jax.Array:
    """Classwise ECE (Kull et al. 2019), the "ClasswiseECE" of Tan et al. (2025, arXiv:2505.23866).

    For each class ``k`` the probabilities ``p_ik`` of all examples are binned with the equal-width
    bins of :func:`ece` and compared with the frequency of ``y_i = k`` in each bin:

        classwise-ECE = (1 / K) sum_k sum_b |sum_{i: p_ik in B_b} (p_ik - 1[y_i = k])| / n.

    Rows are processed in chunks inside one ``fori_loop``, so memory stays ``O(N + K M)`` beyond
    the input even for ``N * K = 1e8``.

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      num_bins: number of equal-width bins ``M``.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar classwise ECE in ``[0, 1]``.
    """
    _common.check_predictions("classwise_ece", probs, labels, mask)
    _common.check_num_bins("classwise_ece", num_bins)
    dtype = _common.float_dtype(probs)
    probs = probs.astype(dtype)
    num_examples, num_classes = probs.shape
    weights = _common.example_weights(mask, num_examples, dtype)
    segments = num_classes * num_bins
    class_offsets = jnp.arange(num_classes, dtype=jnp.int32) * num_bins

    chunk = max(1, min(num_examples, _CLASSWISE_CHUNK_ELEMENTS // num_classes))
    num_chunks = -(-num_examples // chunk)

    def add_chunk(index, sums):
        # The last chunk is shifted back to stay in bounds; rows it shares with the previous chunk
        # get weight 0 so that every row is counted once.
        start = jnp.minimum(index * chunk, num_examples - chunk)
        rows = jax.lax.dynamic_slice_in_dim(probs, start, chunk)
        row_weights = jax.lax.dynamic_slice_in_dim(weights, start, chunk)
        row_weights = jnp.where(start + jnp.arange(chunk) >= index * chunk, row_weights, 0)
        segment_ids = class_offsets + equal_width_bins(rows, num_bins)
        return sums + jax.ops.segment_sum(
            (row_weights[:, None] * rows).ravel(), segment_ids.ravel(), num_segments=segments
        )

    prob_sums = jax.lax.fori_loop(0, num_chunks, add_chunk, jnp.zeros((segments,), dtype))
    # The indicator 1[y_i = k] is non-zero only for k = y_i: one entry per example.
    true_bins = equal_width_bins(_common.true_class_values(probs, labels), num_bins)
    label_sums = jax.ops.segment_sum(weights, labels * num_bins + true_bins, num_segments=segments)
    return jnp.sum(jnp.abs(prob_sums - label_sums)) / (num_classes * _common.safe_total(weights))


@_common.checked_jit()
def accuracy(probs: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of examples whose ``argmax`` (first index on ties) equals the label.

    Args:
      probs: ``[N, K]`` probabilities (or logits: only the argmax is used).
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar accuracy in ``[0, 1]``.
    """
    _common.check_predictions("accuracy", probs, labels, mask)
    dtype = _common.float_dtype(probs)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(dtype)
    return masked_mean(correct, _common.example_weights(mask, labels.shape[0], dtype))


@jax.jit
def mean_confidence(probs: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Average top-label confidence ``mean_i max_k p_ik``.

    Args:
      probs: ``[N, K]`` predicted probabilities.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar mean confidence.
    """
    dtype = _common.float_dtype(probs)
    confidence = jnp.max(probs.astype(dtype), axis=-1)
    return masked_mean(confidence, _common.example_weights(mask, probs.shape[0], dtype))


@_common.checked_jit()
def nll(probs: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Negative log-likelihood ``mean_i -log p_{i, y_i}`` (Möllenhoff & Khan 2022, arXiv:2210.01620, Sec. 5).

    Probabilities are floored at the dtype's smallest normal number so that a zero probability
    gives a large finite value. From logits, ``sam_jax.losses.cross_entropy`` is more accurate.

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar mean NLL in nats.
    """
    _common.check_predictions("nll", probs, labels, mask)
    dtype = _common.float_dtype(probs)
    true_probs = _common.true_class_values(probs.astype(dtype), labels)
    losses = -jnp.log(jnp.maximum(true_probs, jnp.finfo(dtype).tiny))
    return masked_mean(losses, _common.example_weights(mask, labels.shape[0], dtype))


@_common.checked_jit()
def brier(probs: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Multi-class Brier score ``mean_i sum_k (p_ik - 1[y_i = k])^2`` (Brier 1950), in ``[0, 2]``.

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar mean Brier score.
    """
    _common.check_predictions("brier", probs, labels, mask)
    dtype = _common.float_dtype(probs)
    probs = probs.astype(dtype)
    is_label = jnp.arange(probs.shape[1]) == labels[:, None]
    scores = jnp.sum(jnp.square(jnp.where(is_label, probs - 1, probs)), axis=-1)
    return masked_mean(scores, _common.example_weights(mask, labels.shape[0], dtype))


class BinStatistics(NamedTuple):
    """Per-bin summaries of the equal-width top-label bins used by :func:`ece`."""

    confidence: jax.Array  # [M] mean confidence per bin (0 for empty bins)
    accuracy: jax.Array  # [M] accuracy per bin (0 for empty bins)
    counts: jax.Array  # [M] total example weight per bin


@_common.checked_jit(static_argnames=("num_bins",))
def bin_statistics(
    probs: jax.Array, labels: jax.Array, num_bins: int = 15, *, mask: jax.Array | None = None
) -> BinStatistics:
    """Mean confidence, accuracy and weight of each equal-width bin (a reliability diagram's data).

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      num_bins: number of equal-width bins ``M``.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      A :class:`BinStatistics` of ``[M]`` arrays.
    """
    _common.check_predictions("bin_statistics", probs, labels, mask)
    _common.check_num_bins("bin_statistics", num_bins)
    dtype = _common.float_dtype(probs)
    confidence, prediction = _common.top_label(probs.astype(dtype))
    correct = (prediction == labels).astype(dtype)
    weights = _common.example_weights(mask, labels.shape[0], dtype)
    bins = equal_width_bins(confidence, num_bins)
    counts = jax.ops.segment_sum(weights, bins, num_segments=num_bins)
    safe_counts = jnp.where(counts > 0, counts, 1)
    return BinStatistics(
        jax.ops.segment_sum(weights * confidence, bins, num_segments=num_bins) / safe_counts,
        jax.ops.segment_sum(weights * correct, bins, num_segments=num_bins) / safe_counts,
        counts,
    )
