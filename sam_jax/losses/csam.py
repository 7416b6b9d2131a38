"""The CSAM descent loss, eq. (4) of Tan et al. (2025), "Towards Understanding the Calibration
Benefits of Sharpness-Aware Minimization".

CSAM is SAM whose descent gradient (Algorithm 1, lines 5-6) comes from this loss at the perturbed
weights, while the ascent (lines 3-4) uses plain cross-entropy. Confident examples
(``p_y > 1/2``) get their cross-entropy down-weighted by ``(1 + p_y)^(-gamma)``, which Theorem 3
shows strengthens SAM's implicit entropy penalty on them.
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import masked_mean, _true_class_log_prob
from sam_jax.losses.validation import check_labels


def csam_loss(
    logits: jax.Array,
    labels: jax.Array,
    gamma: float,
    *,
    stop_gradient_weight: bool = False,
    mask: Optional[jax.Array] = None,
) -> jax.Array:
    """Mean over the batch of eq. (4): ``-log p`` if ``p <= 1/2``, else ``-(1 + p)^(-gamma) log p``.

    ``p`` is the softmax probability of the true label. Algorithm 1 (line 6) differentiates this
    loss as written, so by default the gradient flows through the weight ``(1 + p)^(-gamma)`` too;
    ``stop_gradient_weight=True`` treats the weight as a constant (focal-loss-style reweighting of
    the cross-entropy gradient). ``gamma = 0`` is cross-entropy, i.e. plain SAM.

    Args:
      logits: ``[B, K]`` unnormalised log-probabilities.
      labels: ``[B]`` integer labels.
      gamma: ``gamma >= 0``, finite. Theorem 3 of Tan et al. (2025, arXiv:2505.23866), the
        entropy-penalty bound, needs ``gamma <= 2``, but their Figure S6 sweeps ``gamma`` over
        ``{0, 0.5, ..., 3}``, so larger values are accepted; 0.5-1 works best there.
      stop_gradient_weight: block the gradient through the reweighting factor.
      mask: optional ``[B]`` weights (1 real example, 0 padding).

    Returns:
      Scalar (masked) mean loss.

    Raises:
      ValueError: when ``gamma`` is negative or not finite.
    """
    if not (math.isfinite(gamma) and gamma >= 0.0):
        raise ValueError(
            f"csam gamma must be finite and >= 0 (eq. 4 of Tan et al. 2025), got {gamma}; Theorem 3 "
            "(the entropy-penalty bound) needs gamma <= 2, and Figure S6 sweeps gamma up to 3."
        )
    check_labels(labels, logits.shape[-1], mask=mask, where="csam")
    _, log_p = _true_class_log_prob(logits, labels)
    p = jnp.exp(log_p)
    weight = jnp.where(p <= 0.5, 1.0, (1.0 + p) ** (-gamma))
    if stop_gradient_weight:
        weight = jax.lax.stop_gradient(weight)
    return masked_mean(-weight * log_p, mask)
