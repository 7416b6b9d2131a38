"""Surrogate-gap guided SAM (GSAM) as one optax step.

GSAM (Zhuang et al. 2022, Algorithm 1) takes SAM's perturbed gradient and adds an ascent step on
the surrogate gap ``h(w) = f_p(w) - f(w)`` that leaves the perturbed loss ``f_p`` unchanged to
first order: it removes ``alpha`` times the component of the clean gradient orthogonal to the
perturbed one. One step, with ``||.||`` the global L2 norm:

    rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)   (step 0)
    g     = grad f(w)                                                          (step 1)
    g_p   = grad f(w + rho_t g / ||g||)                                        (step 2)
    g_perp = g - (<g, g_p> / ||g_p||^2) g_p                                     (step 3)
    updates = base.update(g_p - alpha g_perp, ...)                             (step 4)

``alpha = 0`` is SAM. The radius schedule of step 0 is :func:`gsam_rho_schedule`; ``gsam`` takes
any ``rho`` (a constant or an ``optax.Schedule``), as ``sam`` does.

References:
  Zhuang, Gong, Yuan, Cui, Adam, Dvornek, Tatikonda, Duncan & Liu, 2022. Surrogate Gap Minimization
  Improves Sharpness-Aware Training. ICLR 2022, arXiv:2203.08065.
"""

import jax
import optax

from sam_jax.optim.sam import (
    ScalarOrSchedule,
    ascent_perturbation,
    orthogonal_component,
    sharpness_aware_transformation,
)


def gsam_rho_schedule(
    learning_rate: optax.Schedule, rho_max: float, rho_min: float, *, lr_max: float, lr_min: float
) -> optax.Schedule:
    """GSAM's radius tied to the learning rate (Zhuang et al. 2022, arXiv:2203.08065, Algorithm 1, step 0).

    ``rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)``: the radius falls
    from ``rho_max`` to ``rho_min`` as the learning rate falls from ``lr_max`` to ``lr_min``. A
    constant learning rate (``lr_max == lr_min``) gives ``rho_max`` throughout, as in the authors'
    JAX code (big_vision ``gsam_gradient``). During a warm-up from a learning rate below ``lr_min``
    the formula extrapolates below ``rho_min``, as printed; pass the warm-up's start as ``lr_min``
    (the run's smallest learning rate, as the registry does) to keep ``rho_t`` in
    ``[rho_min, rho_max]``.

    Args:
      learning_rate: the run's learning-rate schedule of the step count.
      rho_max: radius at ``lr_max``.
      rho_min: radius at ``lr_min``.
      lr_max: the largest learning rate of the run.
      lr_min: the smallest learning rate of the run.

    Returns:
      ``rho_t`` as an ``optax.Schedule`` of the step count.

    Raises:
      ValueError: for ``rho_min < 0``, ``rho_max < rho_min`` or ``lr_max < lr_min``.
    """
    if rho_min < 0 or rho_max < rho_min:
        raise ValueError(f"GSAM needs 0 <= rho_min <= rho_max, got rho_min={rho_min}, rho_max={rho_max}.")
    if lr_max < lr_min:
        raise ValueError(f"lr_max={lr_max} must be >= lr_min={lr_min}.")
    if lr_max == lr_min:
        return optax.constant_schedule(rho_max)
    slope = (rho_max - rho_min) / (lr_max - lr_min)

    def schedule(count):
        return rho_min + slope * (learning_rate(count) - lr_min)

    return schedule


def gsam(
    base: optax.GradientTransformation, rho: ScalarOrSchedule, *, alpha: float
) -> optax.GradientTransformationExtraArgs:
    """GSAM (Zhuang et al. 2022, arXiv:2203.08065, Algorithm 1) around any optimizer.

    One ``update`` is one whole step (module docstring): ``grads`` is the loss gradient ``g`` at
    ``params``; ``grad_fn`` is called once, at ``params + rho g / ||g||``, for the perturbed
    gradient ``g_p``; ``base`` receives ``g_p - alpha g_perp``, where ``g_perp`` is the part of
    ``g`` orthogonal to ``g_p`` over all parameters as one vector. Since ``<g_perp, g_p> = 0``, the
    step descends ``f_p`` as SAM does while it climbs the clean loss ``f`` along ``g_perp``, which
    shrinks the surrogate gap ``f_p - f`` (the paper's Sec. 4). This is the paper's
    "minimise f_p" form, the default of the authors' code. A zero ``g_p`` leaves ``g_perp = g``
    (no NaN).

    Weight decay lives in ``base``, as for ``sam``: both gradients are loss gradients.

    Example::

      schedule = optax.cosine_decay_schedule(0.1, 10_000)
      rho = gsam_rho_schedule(schedule, 0.1, 0.02, lr_max=0.1, lr_min=0.0)
      tx = gsam(optax.sgd(schedule, momentum=0.9), rho, alpha=0.2)
      state = tx.init(params)
      grad_fn = jax.grad(lambda p: loss(p, batch))
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)

    Args:
      base: optimizer that takes the descent step.
      rho: perturbation radius >= 0, or an ``optax.Schedule`` of the step count (e.g.
        :func:`gsam_rho_schedule`).
      alpha: weight >= 0 of the surrogate-gap step; 0 is SAM.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``SAMState``; ``update`` requires
      ``params`` and ``grad_fn``.

    Raises:
      ValueError: for ``rho < 0`` or ``alpha < 0``.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (weight of GSAM's surrogate-gap step; 0 is SAM), got {alpha}.")

    def descent_gradient(grads, params, grad_fn, rho_t):
        perturbed = grad_fn(optax.apply_updates(params, ascent_perturbation(grads, params, rho_t)))
        clean_orthogonal = orthogonal_component(grads, perturbed)
        return jax.tree.map(lambda p, c: (p - alpha * c).astype(p.dtype), perturbed, clean_orthogonal)

    return sharpness_aware_transformation(base, rho, descent_gradient, eta=0.0)
