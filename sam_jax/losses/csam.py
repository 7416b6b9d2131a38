"""The CSAM descent loss, eq. (4) of Tan et al. (2025, arXiv:2505.23866), "Towards Understanding
the Calibration Benefits of Sharpness-Aware Minimization", and the same reweighting of another
per-example loss (their Table S15: FL+CSAM, ACLS+CSAM).

CSAM is SAM whose descent gradient (Algorithm 1, lines 5-6) comes from this loss at the perturbed
weights, while the ascent (lines 3-4) uses plain cross-entropy. Confident examples
(``p_y > 1/2``) get their cross-entropy down-weighted by ``(1 + p_y)^(-gamma)``, which Theorem 3
shows strengthens SAM's implicit entropy penalty on them.

Table S15 trains CSAM with focal loss and ACLS but gives no formula for the combination. Read as
eq. (4) is written, "redefine the per-example loss function for the outer loop", the combination
here multiplies the base loss's per-example value by eq. (4)'s factor:
``l~(z) = l(z)`` if ``p_y <= 1/2``, else ``(1 + p_y)^(-gamma) l(z)``, with ``l`` the base loss
(its regulariser included, e.g. ACLS's), ``p_y`` the softmax probability of the true label at the
perturbed weights; for cross-entropy this is eq. (4). This is our inference from the paper.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import _true_class_log_prob, cross_entropy_per_example, masked_mean
from sam_jax.losses.validation import check_labels

PerExampleLoss = Callable[[jax.Array, jax.Array], jax.Array]  # (logits [B, K], labels [B]) -> [B]
LossFn = Callable[..., jax.Array]


def _check_gamma(gamma: float) -> None:
    if not (math.isfinite(gamma) and gamma >= 0.0):
        raise ValueError(
            f"csam gamma must be finite and >= 0 (eq. 4 of Tan et al. 2025), got {gamma}; Theorem 3 "
            "(the entropy-penalty bound) needs gamma <= 2, and Figure S6 sweeps gamma up to 3."
        )


def csam_weight(log_p: jax.Array, gamma: float) -> jax.Array:
    """Eq. (4)'s factor per example: 1 if ``p_y <= 1/2``, else ``(1 + p_y)^(-gamma)``.

    Args:
      log_p: ``[B]`` log-probabilities of the true labels.
      gamma: ``gamma >= 0`` (not checked here).

    Returns:
      ``[B]`` weights in ``(0, 1]``.
    """
    p = jnp.exp(log_p)
    return jnp.where(p <= 0.5, 1.0, (1.0 + p) ** (-gamma))


def csam_reweighted(per_example_loss: PerExampleLoss, gamma: float, *, stop_gradient_weight: bool = False) -> LossFn:
    """``fn(logits, labels, mask=None)``: the (masked) batch mean of eq. (4)'s factor times a per-example loss.

    With ``per_example_loss`` the cross-entropy this is eq. (4) (:func:`csam_loss`); with focal loss
    or ACLS it is the descent loss of FL+CSAM / ACLS+CSAM (Table S15), as the module docstring
    explains. The factor is differentiated through unless ``stop_gradient_weight``.

    Args:
      per_example_loss: ``(logits [B, K], labels [B]) -> [B]``, its hyper-parameters bound.
      gamma: ``gamma >= 0``, finite.
      stop_gradient_weight: block the gradient through the reweighting factor.

    Returns:
      The loss ``fn(logits, labels, mask=None) -> scalar``.

    Raises:
      ValueError: when ``gamma`` is negative or not finite.
    """
    _check_gamma(gamma)

    def loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        check_labels(labels, logits.shape[-1], mask=mask, where="csam")
        _, log_p = _true_class_log_prob(logits, labels)
        weight = csam_weight(log_p, gamma)
        if stop_gradient_weight:
            weight = jax.lax.stop_gradient(weight)
        return masked_mean(weight * per_example_loss(logits, labels), mask)

    return loss


def csam_loss(
    logits: jax.Array,
    labels: jax.Array,
    gamma: float,
    *,
    stop_gradient_weight: bool = False,
    mask: jax.Array | None = None,
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
    return csam_reweighted(cross_entropy_per_example, gamma, stop_gradient_weight=stop_gradient_weight)(
        logits, labels, mask
    )
