"""Focal-loss family: focal loss with a fixed gamma, FLSD-53 and Dual Focal loss.

All three reweight the cross-entropy ``-log p_y`` of an example by a power of how uncertain it is;
the weight is differentiated through (as in the authors' implementations). The powers are formed
as ``exp(gamma * log(base))`` from log-space quantities, so the losses and their gradients stay
finite for float32 logits as large as ``1e4`` in magnitude.
"""

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import _log_one_minus_true_prob, _true_class_log_prob, masked_mean
from sam_jax.losses.hparams import check
from sam_jax.losses.validation import check_labels

FLSD53_THRESHOLD = 0.2  # p_y below which FLSD-53 uses gamma = 5, else gamma = 3


def focal_per_example(logits: jax.Array, labels: jax.Array, gamma: jax.Array) -> jax.Array:
    """``-(1 - p_y)^gamma log p_y`` per example (``gamma`` a scalar or ``[B]``), no checks."""
    _, log_p = _true_class_log_prob(logits, labels)
    return -jnp.exp(gamma * _log_one_minus_true_prob(logits, labels)) * log_p


def focal(logits: jax.Array, labels: jax.Array, *, gamma: float = 3.0, mask: jax.Array | None = None) -> jax.Array:
    """Focal loss, mean of ``-(1 - p_y)^gamma log p_y``; ``gamma = 0`` is cross-entropy.

    The default ``gamma = 3`` is the fixed-gamma setting (FL-3) Mukhoti et al. recommend for
    calibration.

    References:
      Lin et al., 2017, "Focal Loss for Dense Object Detection", arXiv:1708.02002, eq. (4).
      Mukhoti et al., 2020, "Calibrating Deep Neural Networks using Focal Loss", arXiv:2002.09437.

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      gamma: focusing parameter ``>= 0``.
      mask: optional ``[B]`` weights (1 real example, 0 padding).

    Returns:
      Scalar (masked) mean loss.
    """
    check("focal", gamma=gamma)
    check_labels(labels, logits.shape[-1], mask=mask, where="focal")
    return masked_mean(focal_per_example(logits, labels, gamma), mask)


def flsd53(logits: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """FLSD-53: focal loss with the sample-dependent ``gamma = 5`` if ``p_y < 0.2``, else ``3``.

    Mukhoti et al. pick ``gamma`` per example from its current ``p_y`` so that the focal
    gradient never exceeds the cross-entropy one for hard examples; the schedule is a step function
    of ``p_y``, so it carries no gradient.

    References:
      Mukhoti et al., 2020, "Calibrating Deep Neural Networks using Focal Loss", arXiv:2002.09437
      ("FLSD-53").

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      mask: optional ``[B]`` weights.

    Returns:
      Scalar (masked) mean loss.
    """
    check_labels(labels, logits.shape[-1], mask=mask, where="flsd53")
    return masked_mean(flsd53_per_example(logits, labels), mask)


def flsd53_per_example(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """FLSD-53 per example ``[B]``: focal loss with ``gamma = 5`` if ``p_y < 0.2``, else 3 (no checks)."""
    _, log_p = _true_class_log_prob(logits, labels)
    gamma = jnp.where(log_p < jnp.log(FLSD53_THRESHOLD), 5.0, 3.0)
    return focal_per_example(logits, labels, jax.lax.stop_gradient(gamma))


def dual_focal(logits: jax.Array, labels: jax.Array, *, gamma: float = 5.0, mask: jax.Array | None = None) -> jax.Array:
    """Dual Focal loss, mean of ``-(1 - p_y + p_j)^gamma log p_y``.

    ``p_j`` is the largest probability strictly below ``p_y`` ("the highest logit ranked after the
    ground truth logit"; 0 when ``p_y`` is the smallest), as in the authors' code. ``1 - p_y + p_j``
    is formed as ``logaddexp(log(1 - p_y), log p_j)``.

    The default ``gamma = 5`` is an assumption: it is the value third-party reproductions take from
    the paper's CIFAR settings; the paper tunes gamma per dataset.

    References:
      Tao, Dong and Xu, 2023, "Dual Focal Loss for Calibration", arXiv:2305.13665.

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      gamma: focusing parameter ``>= 0``.
      mask: optional ``[B]`` weights.

    Returns:
      Scalar (masked) mean loss.
    """
    check("dual_focal", gamma=gamma)
    check_labels(labels, logits.shape[-1], mask=mask, where="dual_focal")
    return masked_mean(dual_focal_per_example(logits, labels, gamma=gamma), mask)


def dual_focal_per_example(logits: jax.Array, labels: jax.Array, *, gamma: float) -> jax.Array:
    """``-(1 - p_y + p_j)^gamma log p_y`` per example ``[B]`` (no checks; see :func:`dual_focal`)."""
    log_probs, log_p = _true_class_log_prob(logits, labels)
    below = log_probs < log_p[:, None]
    log_p_j = jnp.max(jnp.where(below, log_probs, -jnp.inf), axis=-1)
    log_base = jnp.logaddexp(_log_one_minus_true_prob(logits, labels), log_p_j)
    return -jnp.exp(gamma * log_base) * log_p
