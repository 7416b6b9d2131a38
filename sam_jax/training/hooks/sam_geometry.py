"""The measurements of Figure 2 of Tan et al. (2025): curvature along the SAM step, and 1-SAM's lambda.

Lemma 1 (1-SAM) and Lemma 2 (mini-batch SAM) assume that the smallest Hessian eigenvalue stays
above ``-||g|| / rho`` on the whole segment ``theta' = (1 - t) theta + t theta~``, ``t in [0, 1]``,
from the parameters ``theta`` to the SAM point ``theta~ = theta + rho g / ||g||``; Figure 2(a)
compares ``kappa_min`` at the two endpoints with that bound and Figure 2(b) follows it along the
segment (Remark 1: it decreases about linearly). Figure 2(c) records Theorem 1's coefficient
``lambda = (1 - p~_y) / (1 - p_y)`` and its lower bound ``lambda_0`` of eq. (2), per example, at
the 1-SAM point ``theta~_z = theta + rho g_z / ||g_z||`` of each example's own gradient ``g_z``.

The tracker evaluates the model in inference mode (BatchNorm uses the running statistics in
``model_state``), like ``sam_jax.training.hooks.curvature.make_curvature_tracker``.

References:
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sam_jax.calibration import sam_entropy_coefficient, sam_entropy_coefficient_bound
from sam_jax.curvature import eigenvalues, hessian_operator
from sam_jax.optim import ascent_perturbation, global_norm

PREFIX = "sam_geometry/"

Params = Any
ModelApply = Callable[[Params, Any, jax.Array], jax.Array]
Tracker = Callable[..., dict[str, float]]


def _check_arguments(rho: float, path_points: tuple[float, ...], num_iters: int, per_example: int) -> None:
    """Raises ``ValueError`` on a non-positive radius, a bad path or a count below 1."""
    if not rho > 0:
        raise ValueError(f"rho={rho} must be > 0: it is the SAM radius of the perturbation rho g / ||g||.")
    if not path_points:
        raise ValueError("path_points is empty; give at least one t in [0, 1] (0 is theta, 1 the SAM point theta~).")
    if any(not 0.0 <= t <= 1.0 for t in path_points):
        raise ValueError(f"path_points={path_points} must lie in [0, 1], the segment from theta to theta~ (Lemma 1).")
    if len(set(path_points)) != len(path_points):
        raise ValueError(f"path_points={path_points} has repeated values; each gives one metric key.")
    if num_iters < 1:
        raise ValueError(f"num_iters={num_iters} must be >= 1 (Lanczos steps per eigenvalue).")
    if per_example < 1:
        raise ValueError(f"per_example={per_example} must be >= 1 (examples of the lambda statistics).")


def path_kappa_min(
    loss: Callable[[Params], jax.Array],
    params: Params,
    rho: float,
    path_points: jax.Array,
    key: jax.Array,
    num_iters: int,
) -> tuple[jax.Array, jax.Array]:
    """Smallest Hessian eigenvalue along the SAM segment, and the bound that Lemmas 1 and 2 assume on it.

    Tan et al. 2025 (arXiv:2505.23866), Lemma 2 and Figure 2(a)/(b): with ``g = grad loss(theta)``
    and ``theta~ = theta + rho g / ||g||`` (``sam_jax.optim.ascent_perturbation``; ``theta~ =
    theta`` when ``g = 0``), ``kappa_min(grad^2 loss(theta + t (theta~ - theta)))`` for each ``t``,
    by Lanczos, and ``-||g|| / rho``.

    Args:
      loss: scalar loss as a function of the parameters alone.
      params: the parameters ``theta``.
      rho: SAM radius.
      path_points: ``[T]`` positions ``t`` on the segment.
      key: PRNG key of the Lanczos starting vectors (one per point).
      num_iters: Lanczos steps per eigenvalue.

    Returns:
      ``([T] smallest eigenvalues, scalar bound -||g|| / rho)``.
    """
    grad = jax.grad(loss)(params)
    step = ascent_perturbation(grad, params, rho)

    def kappa_min(point_and_key: tuple[jax.Array, jax.Array]) -> jax.Array:
        t, point_key = point_and_key
        point = optax.apply_updates(params, jax.tree.map(lambda e: (t * e).astype(e.dtype), step))
        values, _ = eigenvalues(
            hessian_operator(loss, point), point, k=1, num_iters=num_iters, which="smallest", key=point_key
        )
        return values[0]

    keys = jax.random.split(key, path_points.shape[0])
    return jax.lax.map(kappa_min, (path_points, keys)), -global_norm(grad) / rho


def one_sam_entropy_coefficients(
    model_apply: ModelApply,
    loss_fn: Callable[..., jax.Array],
    params: Params,
    model_state: Any,
    images: jax.Array,
    labels: jax.Array,
    rho: float,
) -> tuple[jax.Array, jax.Array]:
    """Per-example ``lambda`` of Theorem 1 and ``lambda_0`` of eq. (2) at each example's 1-SAM point.

    Tan et al. 2025 (arXiv:2505.23866), Theorem 1 and eq. (2), 1-SAM: for each example ``z = (x,
    y)``, ``g_z = grad l_theta(z)``, ``theta~_z = theta + rho g_z / ||g_z||``, ``p_y`` and ``p~_y``
    the softmax probabilities of ``y`` at ``theta`` and ``theta~_z``; ``lambda = (1 - p~_y) / (1 -
    p_y)`` (``sam_jax.calibration.sam_entropy_coefficient``) and ``lambda_0 = (1 - p~_y) / (1 -
    exp(rho ||g_z|| / 2) p~_y)`` (``sam_entropy_coefficient_bound``). Gradients and perturbed
    forwards are vmapped over the examples.

    Args:
      model_apply: ``model_apply(params, model_state, x) -> logits`` in inference mode.
      loss_fn: ``loss_fn(logits, labels, mask=None) -> scalar mean``; on one example, its loss.
      params: the parameters ``theta``.
      model_state: the model's non-trainable state (e.g. BatchNorm statistics).
      images: ``[N, ...]`` inputs.
      labels: ``[N]`` integer labels.
      rho: SAM radius.

    Returns:
      ``([N] lambda, [N] lambda_0)``.
    """

    def example_loss(p: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        return loss_fn(model_apply(p, model_state, x[None]), y[None])

    def perturbed_logits(grad: Params, x: jax.Array) -> jax.Array:
        perturbed = optax.apply_updates(params, ascent_perturbation(grad, params, rho))
        return model_apply(perturbed, model_state, x[None])[0]

    grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, images, labels)
    probs = jax.nn.softmax(model_apply(params, model_state, images))
    perturbed_probs = jax.nn.softmax(jax.vmap(perturbed_logits)(grads, images))
    grad_norms = jax.vmap(global_norm)(grads)
    return (
        sam_entropy_coefficient(probs, perturbed_probs, labels),
        sam_entropy_coefficient_bound(perturbed_probs, labels, rho, grad_norms),
    )


def finite_coefficients(lam: jax.Array, lam0: jax.Array) -> jax.Array:
    """Where both ``lambda`` and ``lambda_0`` are finite: ``p_y < 1`` and ``1 - exp(rho ||g_z|| / 2) p~_y > 0``.

    ``lambda = (1 - p~_y) / (1 - p_y)`` is finite exactly when ``p_y < 1``. The numerator ``1 -
    p~_y`` of ``lambda_0`` is non-negative and ``exp(rho ||g_z|| / 2) >= 1``, so its denominator is
    positive exactly when ``0 < lambda_0 < inf``; where it is not, Lemma 1's ``p_y >= exp(rho
    ||g_z|| / 2) p~_y`` fails (its curvature assumption does not hold at that example) and eq. (2)
    gives no bound.
    """
    return jnp.isfinite(lam) & jnp.isfinite(lam0) & (lam0 > 0)


def make_sam_geometry_tracker(
    model_apply: ModelApply,
    loss_fn: Callable[..., jax.Array],
    rho: float,
    *,
    path_points: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    num_iters: int = 20,
    per_example: int = 256,
) -> Tracker:
    """Builds the tracker of Tan et al. 2025 (arXiv:2505.23866) Figure 2; its computation is jitted once per shape.

    Metric keys (all under ``sam_geometry/``):
      ``kappa_min_t{t}`` for each ``t`` in ``path_points`` (``t`` as a Python float: ``kappa_min_t0.0``,
      ``kappa_min_t0.5``, ``kappa_min_t1.0``): the smallest eigenvalue of the Hessian of the batch
      loss at ``theta + t (theta~ - theta)``, ``theta~`` the mini-batch SAM point of the batch
      gradient ``g`` (Lanczos, ``num_iters`` steps); ``kappa_min_bound``: ``-||g|| / rho``, the
      bound Lemmas 1 and 2 assume (see ``path_kappa_min``).
      ``lambda_mean``, ``lambda_median``, ``lambda0_mean``, ``lambda0_median``: Theorem 1's
      ``lambda`` and eq. (2)'s ``lambda_0`` at each example's 1-SAM point, over the first
      ``per_example`` examples where both are finite (``finite_coefficients``: ``p_y < 1`` and a
      positive denominator of ``lambda_0``), NaN when there is none; ``lambda_fraction_finite``:
      the fraction of those examples where both are finite.

    Args:
      model_apply: ``model_apply(params, model_state, x) -> logits`` in inference mode.
      loss_fn: ``loss_fn(logits, labels, mask=None) -> scalar mean``.
      rho: SAM radius.
      path_points: positions ``t`` in ``[0, 1]`` on the segment from ``theta`` (0) to ``theta~`` (1).
      num_iters: Lanczos steps per eigenvalue (capped at the number of parameters).
      per_example: number of leading examples of the batch in the ``lambda`` statistics.

    Returns:
      ``tracker(params, model_state, images, labels, key) -> dict[str, float]``.

    Raises:
      ValueError: on ``rho <= 0``, empty, repeated or out-of-range ``path_points``, or
        ``num_iters`` or ``per_example`` below 1.
    """
    points = tuple(float(t) for t in path_points)
    _check_arguments(rho, points, num_iters, per_example)

    def compute(params, model_state, images, labels, key):
        def batch_loss(p: Params) -> jax.Array:
            return loss_fn(model_apply(p, model_state, images), labels)

        kappas, bound = path_kappa_min(batch_loss, params, rho, jnp.asarray(points), key, num_iters)
        lam, lam0 = one_sam_entropy_coefficients(
            model_apply, loss_fn, params, model_state, images[:per_example], labels[:per_example], rho
        )
        finite = finite_coefficients(lam, lam0)
        lam, lam0 = jnp.where(finite, lam, jnp.nan), jnp.where(finite, lam0, jnp.nan)
        metrics = {f"kappa_min_t{t}": kappas[i] for i, t in enumerate(points)}
        metrics.update(
            kappa_min_bound=bound,
            lambda_mean=jnp.nanmean(lam),
            lambda_median=jnp.nanmedian(lam),
            lambda0_mean=jnp.nanmean(lam0),
            lambda0_median=jnp.nanmedian(lam0),
            lambda_fraction_finite=jnp.mean(finite.astype(lam.dtype)),
        )
        return {PREFIX + name: value for name, value in metrics.items()}

    compiled = jax.jit(compute)

    def tracker(params, model_state, images, labels, key) -> dict[str, float]:
        metrics = jax.device_get(compiled(params, model_state, images, labels, key))
        return {name: float(value) for name, value in metrics.items()}

    return tracker
