"""Per-batch classification losses computed from logits, and the helpers the other losses share.

Every loss takes ``logits [B, K]`` and integer ``labels [B]`` and returns the mean over the batch,
or the weighted mean when a ``mask [B]`` (1 for real examples, 0 for padding) is given, so that a
padded final evaluation batch gives the exact full-data value.
"""

import jax
import jax.numpy as jnp
import optax

from sam_jax.losses.validation import check_labels


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Weighted mean ``sum(m * v) / sum(m)``; the plain mean when ``mask`` is None.

    The one masked mean of the package: the losses reduce their per-example values with it and the
    calibration metrics their per-example scores. Empty-set rule: a mask of total weight 0 (all
    zero) gives 0, not NaN. An example of weight 0 does not enter at all, even when its value is
    ``inf`` or NaN (e.g. ``exp(-margin)`` of a padding row).

    Args:
      values: per-example values, e.g. ``[B]``.
      mask: optional non-negative weights of the shape of ``values`` (1 real example, 0 padding).

    Returns:
      Scalar mean.
    """
    if mask is None:
        return jnp.mean(values)
    weights = mask.astype(values.dtype)
    total = jnp.sum(weights)
    weighted = jnp.where(weights > 0, values * weights, jnp.zeros_like(values))
    return jnp.sum(weighted) / jnp.where(total > 0, total, jnp.ones_like(total))


_masked_mean = masked_mean  # the name the loss modules of this package import


def _true_class_log_prob(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log_softmax(logits) [B, K], log p_y [B])`` from the stable log-softmax."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return log_probs, jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _log_one_minus_true_prob(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``log(1 - p_y)`` as ``logsumexp_{k != y} z_k - logsumexp_k z_k``.

    Forming ``1 - p_y`` in floating point rounds to 0 once ``p_y`` is within an ulp of 1 (logit gaps
    of ~17 in float32), and ``(1 - p_y)^gamma`` then has an infinite derivative for ``gamma < 1``;
    this form stays finite for any finite logits (``K >= 2``).
    """
    is_label = labels[:, None] == jnp.arange(logits.shape[-1])
    others = jnp.where(is_label, -jnp.inf, logits)
    return jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(logits, axis=-1)


def cross_entropy_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-log p_y`` per example ``[B]`` from the stable log-softmax (no checks).

    The per-example form that CSAM's reweighting (``sam_jax.losses.csam_reweighted``) multiplies;
    it equals the terms of :func:`cross_entropy` (optax's) up to float rounding.
    """
    return -_true_class_log_prob(logits, labels)[1]


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy -log p_y."""
    check_labels(labels, logits.shape[-1], mask=mask, where="cross_entropy")
    return _masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), mask)


def mse(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean squared error to one-hot targets, 0.5 * ||f(x) - e_y||^2 summed over classes.

    The MSE variant of Morosini et al. 2026, "Too Sharp, Too Sure" (arXiv:2604.20614), Appendix D:
    the network outputs are regressed on one-hot labels; predictions are read as softmax(outputs)
    for calibration.
    """
    check_labels(labels, logits.shape[-1], mask=mask, where="mse")
    return _masked_mean(mse_per_example(logits, labels), mask)


def mse_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``0.5 * ||f(x) - e_y||^2`` per example ``[B]`` (no checks)."""
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    return 0.5 * jnp.sum((logits - targets) ** 2, axis=-1)
