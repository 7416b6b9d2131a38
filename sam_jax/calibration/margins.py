"""Logit margins and the exponential margin moment of Morosini et al. (2026), Sec. 4.

The true (logit) margin of an example is ``m_i = z_{i, y_i} - max_{j != y_i} z_ij``; the empirical
exponential margin moment ``Q = mean_i exp(-m_i)`` bounds the binned ECE from above by ``(K - 1) Q``
(Theorem 4.1) and, once every margin is positive, from below by ``Q / K`` (Theorem 4.2).

References:
  Morosini, Gjika, Poggio & Beneventano, 2026. Too Sharp, Too Sure: When Calibration Follows
  Curvature. arXiv:2604.20614.
"""

import math

import jax
import jax.numpy as jnp

from sam_jax.calibration import _common
from sam_jax.losses.classification import masked_mean


@_common.checked_jit(probabilities=False)
def margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """True logit margins ``m_i = z_{i, y_i} - max_{j != y_i} z_ij``.

    The "true margin" of Morosini et al. (2026, arXiv:2604.20614), Sec. 4.

    Args:
      logits: ``[N, K]`` logits.
      labels: ``[N]`` integer labels.

    Returns:
      ``[N]`` margins; positive exactly when the label is the strict argmax.
    """
    _common.check_predictions("margins", logits, labels, None, probabilities=False)
    dtype = _common.float_dtype(logits)
    logits = logits.astype(dtype)
    is_label = jnp.arange(logits.shape[1]) == labels[:, None]
    runner_up = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
    return _common.true_class_values(logits, labels) - runner_up


@_common.checked_jit(probabilities=False)
def margin_moment(logits: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Empirical exponential margin moment ``Q_D = mean_i exp(-m_i)``.

    Morosini et al. (2026, arXiv:2604.20614), Sec. 4.2.

    Args:
      logits: ``[N, K]`` logits.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar ``Q``; it overflows to ``inf`` when some margin is below about ``-88`` in float32.
    """
    _common.check_predictions("margin_moment", logits, labels, mask, probabilities=False)
    values = jnp.exp(-margins(logits, labels))
    # masked_mean leaves padding out even where exp(-m) = inf (inf * 0 would be NaN).
    return masked_mean(values, mask)


def mse_optimum_confidence(num_classes: int) -> float:
    """Softmax confidence ``e / (e + K - 1)`` at the optimum of the one-hot MSE loss.

    Morosini et al. (2026, arXiv:2604.20614), App. D.1: the MSE minimiser has logits ``e_y``
    exactly, so a model trained to it reports this confidence (0.23 for ``K = 10``) while being
    always right.

    Args:
      num_classes: number of classes ``K >= 2``.

    Returns:
      The confidence as a Python float.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"mse_optimum_confidence: num_classes must be an int >= 2, got {num_classes!r}.")
    return math.e / (math.e + num_classes - 1)
