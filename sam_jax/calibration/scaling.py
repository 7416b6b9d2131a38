"""Post-hoc recalibration on a validation split: temperature scaling and isotonic regression.

Tan et al. (2025), Sec. 4 and Fig. 3, compare SAM's raw ECE with SGD's ECE after
temperature scaling (Guo et al. 2017) and isotonic regression (Zadrozny & Elkan 2002); "TCE" is
the ECE on the test split after temperature scaling fitted on the validation split (Table 2).

References:
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
  Guo, Pleiss, Sun & Weinberger, 2017. On Calibration of Modern Neural Networks. ICML 2017,
  arXiv:1706.04599.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax.calibration import _common
from sam_jax.calibration.metrics import ece
from sam_jax.losses.classification import masked_mean


def _nll_slope_and_curvature(inverse_temperature, logits, labels, weights):
    """First and second derivatives of the mean NLL of ``softmax(beta z)`` in ``beta``.

    ``d/dbeta = E_p[z] - z_y`` and ``d^2/dbeta^2 = Var_p[z] >= 0``: the NLL is convex in ``beta``.
    """
    probs = jax.nn.softmax(inverse_temperature * logits, axis=-1)
    mean_logit = jnp.sum(probs * logits, axis=-1)
    variance = jnp.sum(probs * jnp.square(logits - mean_logit[:, None]), axis=-1)
    slope = mean_logit - _common.true_class_values(logits, labels)
    return masked_mean(slope, weights), masked_mean(variance, weights)


@_common.checked_jit(static_argnames=("bounds", "tolerance", "max_iterations"), probabilities=False)
def fit_temperature(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
    bounds: tuple[float, float] = (0.01, 100.0),
    tolerance: float = 1e-6,
    max_iterations: int = 100,
) -> jax.Array:
    """Temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    The NLL is convex in ``beta = 1 / T``, so its minimiser is the root of the slope. It is found
    by Newton's method on ``beta`` safeguarded by bisection (in ``log beta``) of a bracket that
    starts at ``[1 / T_max, 1 / T_min]``; if the minimiser lies outside ``bounds`` (e.g. separable
    data, where the NLL keeps falling as ``T -> 0``) the nearer bound is returned. Jit-able.

    Args:
      logits: ``[N, K]`` validation logits.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).
      bounds: ``(T_min, T_max)`` with ``0 < T_min < T_max``.
      tolerance: stop when a step changes ``beta`` by less than ``tolerance * beta``.
      max_iterations: cap on the number of Newton/bisection steps.

    Returns:
      Scalar temperature ``T`` in ``bounds``.
    """
    _common.check_predictions("fit_temperature", logits, labels, mask, probabilities=False)
    t_min, t_max = bounds
    if not 0 < t_min < t_max:
        raise ValueError(f"fit_temperature: bounds must satisfy 0 < T_min < T_max, got {bounds}.")
    dtype = _common.float_dtype(logits)
    logits = logits.astype(dtype)
    weights = _common.example_weights(mask, labels.shape[0], dtype)
    lower, upper = jnp.asarray(1 / t_max, dtype), jnp.asarray(1 / t_min, dtype)

    def keep_going(state):
        _, _, _, iteration, converged = state
        return jnp.logical_and(iteration < max_iterations, jnp.logical_not(converged))

    def step(state):
        beta, lower, upper, iteration, _ = state
        slope, curvature = _nll_slope_and_curvature(beta, logits, labels, weights)
        lower = jnp.where(slope < 0, beta, lower)
        upper = jnp.where(slope > 0, beta, upper)
        newton = beta - slope / jnp.where(curvature > 0, curvature, 1)
        inside = (curvature > 0) & (newton > lower) & (newton < upper)
        new_beta = jnp.where(inside, newton, jnp.sqrt(lower * upper))
        new_beta = jnp.where(slope == 0, beta, new_beta)
        converged = jnp.abs(new_beta - beta) <= tolerance * beta
        return new_beta, lower, upper, iteration + 1, converged

    start = jnp.clip(jnp.asarray(1, dtype), lower, upper)
    beta, *_ = jax.lax.while_loop(keep_going, step, (start, lower, upper, 0, jnp.asarray(False)))
    return 1 / beta


def tce(
    logits_val: jax.Array,
    labels_val: jax.Array,
    logits_test: jax.Array,
    labels_test: jax.Array,
    num_bins: int = 15,
    *,
    mask_val: jax.Array | None = None,
    mask_test: jax.Array | None = None,
) -> jax.Array:
    """ECE on the test split after temperature scaling fitted on the validation split ("TCE").

    Tan et al. (2025, arXiv:2505.23866), Table 2 and Fig. 3(c-d).

    Args:
      logits_val: ``[N_val, K]`` validation logits (to fit ``T``).
      labels_val: ``[N_val]`` validation labels.
      logits_test: ``[N_test, K]`` test logits.
      labels_test: ``[N_test]`` test labels.
      num_bins: number of equal-width ECE bins.
      mask_val: optional ``[N_val]`` weights.
      mask_test: optional ``[N_test]`` weights.

    Returns:
      Scalar ECE of ``softmax(logits_test / T)``.
    """
    temperature = fit_temperature(logits_val, labels_val, mask=mask_val)
    return ece(jax.nn.softmax(logits_test / temperature, axis=-1), labels_test, num_bins, mask=mask_test)


class IsotonicCalibrator(NamedTuple):
    """Per-class monotone maps fitted by :func:`fit_isotonic`; call it on ``probs [N, K]``.

    Class ``k`` maps ``p_k`` by linear interpolation through the knots ``(knots_x[k], knots_y[k])``
    (constant outside them), then rows are renormalised to sum to one; a row that every map sends
    to 0 becomes uniform.
    """

    knots_x: jax.Array  # [K, P] increasing knot positions per class, padded past 1 with copies
    knots_y: jax.Array  # [K, P] non-decreasing calibrated values at the knots

    def __call__(self, probs: jax.Array) -> jax.Array:
        if probs.ndim != 2 or probs.shape[1] != self.knots_x.shape[0]:
            raise ValueError(
                f"IsotonicCalibrator: expected probs of shape [N, {self.knots_x.shape[0]}], got {probs.shape}."
            )
        mapped = jax.vmap(jnp.interp, in_axes=(1, 0, 0), out_axes=1)(
            probs.astype(self.knots_y.dtype), self.knots_x, self.knots_y
        )
        totals = jnp.sum(mapped, axis=-1, keepdims=True)
        uniform = jnp.full_like(mapped, 1 / mapped.shape[1])
        return jnp.where(totals > 0, mapped / jnp.where(totals > 0, totals, 1), uniform)


def fit_isotonic(probs_val: jax.Array, labels_val: jax.Array, *, mask: jax.Array | None = None) -> IsotonicCalibrator:
    """Fits one-vs-rest isotonic regression per class (Zadrozny & Elkan 2002), via scikit-learn.

    For each class ``k``, a non-decreasing map ``g_k`` minimises
    ``sum_i w_i (g_k(p_ik) - 1[y_i = k])^2`` (pool-adjacent-violators); calibrated probabilities
    are ``g_k(p_k) / sum_j g_j(p_j)``. Fitting runs on the host; the returned calibrator is a
    pytree, applied with jit-able ``jnp.interp``.

    Args:
      probs_val: ``[N, K]`` validation probabilities.
      labels_val: ``[N]`` validation labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      An :class:`IsotonicCalibrator`.
    """
    # Imported here so that ``import sam_jax.calibration`` loads only jax and numpy.
    from sklearn.isotonic import IsotonicRegression  # pylint: disable=import-outside-toplevel

    _common.check_predictions("fit_isotonic", probs_val, labels_val, mask)
    probs = np.asarray(probs_val, dtype=np.float64)
    labels = np.asarray(labels_val)
    weights = None if mask is None else np.asarray(mask, dtype=np.float64)
    knots = []
    for k in range(probs.shape[1]):
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        regression.fit(probs[:, k], (labels == k).astype(np.float64), sample_weight=weights)
        knots.append((regression.X_thresholds_, regression.y_thresholds_))
    width = max(len(x) for x, _ in knots)
    # Pad every class to the same number of knots with points past 1, where no probability lies,
    # keeping the last value: interpolation is unchanged and the knots stay strictly increasing.
    knots_x = np.stack([np.concatenate([x, x[-1] + 1.0 + np.arange(width - len(x))]) for x, _ in knots])
    knots_y = np.stack([np.concatenate([y, np.full(width - len(y), y[-1])]) for _, y in knots])
    dtype = _common.float_dtype(jnp.asarray(probs_val))
    return IsotonicCalibrator(jnp.asarray(knots_x, dtype), jnp.asarray(knots_y, dtype))
