"""Binary entropy of the true-class probability and SAM's entropy coefficient.

Tan et al. (2025), Theorem 1: for a SAM step from ``theta`` to the perturbed
``theta~``, the perturbed loss satisfies ``l(theta~) >= l(theta) - lambda H(p_y) + H(p~_y)``
with the binary entropy ``H(p) = -p log p - (1 - p) log(1 - p)`` and ``lambda = (1 - p~_y) / (1 - p_y)``, and
eq. 2 bounds ``lambda >= lambda_0 = (1 - p~_y) / (1 - exp(rho ||grad l|| / 2) p~_y)``.

References:
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
"""

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp

from sam_jax.calibration import _common
from sam_jax.losses.classification import masked_mean


def binary_entropy(p: jax.Array) -> jax.Array:
    """``H(p) = -p log p - (1 - p) log(1 - p)`` elementwise, in nats, with ``H(0) = H(1) = 0``."""
    return -jsp.xlogy(p, p) - jsp.xlogy(1 - p, 1 - p)


@_common.checked_jit()
def true_class_entropy(probs: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Mean binary entropy ``H(p_y)`` of the true-class probability (Tan et al. 2025, Theorem 1, Fig. S5).

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar mean entropy in ``[0, log 2]`` nats.
    """
    _common.check_predictions("true_class_entropy", probs, labels, mask)
    dtype = _common.float_dtype(probs)
    entropies = binary_entropy(_common.true_class_values(probs.astype(dtype), labels))
    return masked_mean(entropies, _common.example_weights(mask, labels.shape[0], dtype))


def sam_entropy_coefficient(probs: jax.Array, perturbed_probs: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``lambda = (1 - p~_y) / (1 - p_y)`` of Theorem 1.

    Args:
      probs: ``[N, K]`` probabilities at the parameters ``theta``.
      perturbed_probs: ``[N, K]`` probabilities at the SAM-perturbed parameters ``theta~``.
      labels: ``[N]`` integer labels.

    Returns:
      ``[N]`` coefficients (``inf`` where ``p_y = 1``).
    """
    _common.check_predictions("sam_entropy_coefficient", probs, labels, None)
    _common.check_predictions("sam_entropy_coefficient", perturbed_probs, labels, None)
    p_y = _common.true_class_values(probs, labels)
    perturbed_p_y = _common.true_class_values(perturbed_probs, labels)
    return (1 - perturbed_p_y) / (1 - p_y)


def sam_entropy_coefficient_bound(
    perturbed_probs: jax.Array, labels: jax.Array, rho: float, grad_norms: jax.Array
) -> jax.Array:
    """Per-example lower bound ``lambda_0 = (1 - p~_y) / (1 - exp(rho ||g|| / 2) p~_y)`` (eq. 2).

    Args:
      perturbed_probs: ``[N, K]`` probabilities at the SAM-perturbed parameters.
      labels: ``[N]`` integer labels.
      rho: SAM radius.
      grad_norms: per-example gradient norms ``||grad_theta l(z_i)||``, ``[N]`` or a scalar.

    Returns:
      ``[N]`` bounds; meaningful where ``exp(rho ||g|| / 2) p~_y < 1`` (Lemma 1 gives
      ``p_y >= exp(rho ||g|| / 2) p~_y``), negative otherwise.
    """
    _common.check_predictions("sam_entropy_coefficient_bound", perturbed_probs, labels, None)
    perturbed_p_y = _common.true_class_values(perturbed_probs, labels)
    return (1 - perturbed_p_y) / (1 - jnp.exp(rho * jnp.asarray(grad_norms) / 2) * perturbed_p_y)
