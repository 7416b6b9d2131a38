"""Sharpness-aware minimisation (SAM), adaptive SAM (ASAM) and stable SAM (SSAM) as one optax step.

One ``update`` call performs a whole SAM step (Foret et al. 2020, eq. 2; Tan et al. 2025, Sec. 3.2):

    e = rho * g / ||g||                         (ascent perturbation, ||.|| the global L2 norm)
    g_desc = grad L(w + e)                      (descent gradient, one call of ``grad_fn``)
    updates = base.update(g_desc, ...)          (any optax optimizer takes the descent step)

The perturbation and the SSAM rescale are plain functions so that ``m_sharpness_sam`` can ``vmap``
them over sub-batches instead of re-implementing them.

References:
  Foret, Kleiner, Mobahi & Neyshabur, 2020. Sharpness-Aware Minimization for Efficiently
  Improving Generalization. ICLR 2021, arXiv:2010.01412.
  Kwon, Kim, Park & Choi, 2021. ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
  Learning of Deep Neural Networks. ICML 2021, arXiv:2102.11600.
  Tan, Zhang, Liu, Wang & Hao, 2024. Stabilizing Sharpness-Aware Minimization Through A Simple
  Renormalization Strategy. arXiv:2401.07250.
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

GradFn = Callable[[optax.Params], optax.Updates]
ScalarOrSchedule = float | optax.Schedule
DescentGradientFn = Callable[[optax.Updates, optax.Params, GradFn, jax.Array], optax.Updates]


class SAMState(NamedTuple):
    """State of ``sam`` and ``m_sharpness_sam``."""

    count: jax.Array  # number of steps taken; indexes a ``rho`` schedule
    base_state: optax.OptState  # state of the wrapped base optimizer


def global_norm(tree: optax.Updates) -> jax.Array:
    """The L2 norm over every leaf of ``tree``, accumulated in float32 at least.

    Leaves are cast to ``promote_types(dtype, float32)`` before they are squared and summed, since
    bfloat16 has an 8-bit significand: a bfloat16 sum of squares stops growing once it is about 2^8
    times the terms it adds. float64 leaves (``jax_enable_x64``) stay float64.

    Args:
      tree: any pytree of arrays.

    Returns:
      A scalar of float32 or a wider dtype.
    """
    return optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree))


def _safe_inverse(x: jax.Array) -> jax.Array:
    """1 / x, and 0 where x == 0, so that a zero gradient gives a zero perturbation (no NaN)."""
    nonzero = x > 0
    return jnp.where(nonzero, 1.0 / jnp.where(nonzero, x, 1.0), 0.0)


def ascent_perturbation(
    grads: optax.Updates,
    params: optax.Params,
    rho: jax.Array,
    *,
    adaptive: bool = False,
    eta: float = 0.0,
) -> optax.Updates:
    """The SAM ascent step ``e`` added to ``params`` before the descent gradient is taken.

    SAM (Foret et al. 2020, arXiv:2010.01412, eq. 2; Tan et al. 2025, arXiv:2505.23866, Sec. 3.2):
    ``e = rho * g / ||g||``. ASAM (Kwon et al. 2021, arXiv:2102.11600, as in the SamsungLabs code)
    with the elementwise normalisation operator ``T = |w| + eta``: ``e = rho * T^2 g / ||T g||``. A
    zero gradient gives ``e = 0``. The norm is accumulated in float32 at least (``global_norm``) and
    ``e`` is computed in that precision and returned in the dtype of ``params``, so bfloat16
    gradients of float32 parameters (mixed precision) still move the weights by exactly ``rho``.

    Args:
      grads: loss gradient ``g`` at ``params`` (any pytree).
      params: current parameters ``w`` (same structure as ``grads``).
      rho: perturbation radius (scalar).
      adaptive: use the ASAM operator ``T``.
      eta: offset of ``T``; only used when ``adaptive``.

    Returns:
      The perturbation ``e``, a pytree like ``params`` (its structure and dtypes).
    """
    if adaptive:
        scale = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
        scaled = jax.tree.map(jnp.multiply, scale, grads)
        step = rho * _safe_inverse(global_norm(scaled))
        return jax.tree.map(lambda t, tg, w: (step * t * tg).astype(w.dtype), scale, scaled, params)
    step = rho * _safe_inverse(global_norm(grads))
    return jax.tree.map(lambda g, w: (step * g).astype(w.dtype), grads, params)


def match_norm(grads: optax.Updates, reference: optax.Updates) -> optax.Updates:
    """SSAM renormalisation (Tan et al. 2024, arXiv:2401.07250): ``grads * ||reference|| / ||grads||``.

    Args:
      grads: descent gradient (taken at the perturbed point).
      reference: ascent gradient whose global L2 norm the result gets.

    Returns:
      ``grads`` rescaled; zero stays zero (no NaN).
    """
    ratio = global_norm(reference) * _safe_inverse(global_norm(grads))
    return jax.tree.map(lambda g: (ratio * g).astype(g.dtype), grads)


def tree_inner_product(a: optax.Updates, b: optax.Updates) -> jax.Array:
    """``<a, b>`` over every leaf, accumulated in float32 at least (as ``global_norm``)."""
    return sum(
        jnp.vdot(x.astype(jnp.promote_types(x.dtype, jnp.float32)), y.astype(jnp.promote_types(y.dtype, jnp.float32)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def orthogonal_component(vector: optax.Updates, direction: optax.Updates) -> optax.Updates:
    """``vector - (<vector, d> / ||d||^2) d``: the part of ``vector`` orthogonal to ``direction`` d.

    Both gradients of GSAM (Zhuang et al. 2022, arXiv:2203.08065, Algorithm 1, step 3: the clean
    gradient decomposed against the perturbed one) and LookSAM (Liu et al. 2022, arXiv:2203.02714,
    Algorithm 1: the SAM gradient decomposed against the clean one) are split this way, over all
    parameters as one vector. A zero ``direction`` leaves ``vector`` unchanged (no NaN).

    Args:
      vector: the pytree to decompose.
      direction: a pytree like ``vector``.

    Returns:
      A pytree like ``vector`` (its dtypes).
    """
    coefficient = tree_inner_product(vector, direction) * _safe_inverse(global_norm(direction) ** 2)
    return jax.tree.map(lambda v, d: (v - coefficient * d).astype(v.dtype), vector, direction)


def validated_rho_schedule(rho: ScalarOrSchedule, eta: float) -> optax.Schedule:
    """Checks SAM hyper-parameters and returns ``rho`` as a schedule of the step count.

    Raises:
      ValueError: when a constant ``rho`` or ``eta`` is negative.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (ASAM offset of |w|), got {eta}.")
    if callable(rho):
        return rho
    if rho < 0:
        raise ValueError(f"rho must be >= 0 (perturbation radius), got {rho}; use 0 to disable SAM.")
    return optax.constant_schedule(rho)


def sharpness_aware_transformation(
    base: optax.GradientTransformation,
    rho: ScalarOrSchedule,
    descent_gradient: DescentGradientFn,
    *,
    eta: float,
) -> optax.GradientTransformationExtraArgs:
    """Wraps ``base`` so that one ``update`` feeds it a sharpness-aware descent gradient.

    This is the step shared by ``sam`` and ``m_sharpness_sam``; they differ only in
    ``descent_gradient(grads, params, grad_fn, rho) -> descent gradient``.

    Args:
      base: optimizer applied to the descent gradient (weight decay belongs here).
      rho: perturbation radius, constant or ``optax.Schedule`` of the step count.
      descent_gradient: computes the gradient handed to ``base``.
      eta: ASAM offset, validated here.

    Returns:
      The wrapped transformation; ``update`` requires ``params`` and ``grad_fn``.
    """
    rho_fn = validated_rho_schedule(rho, eta)

    def init(params: optax.Params) -> SAMState:
        return SAMState(count=jnp.zeros([], jnp.int32), base_state=base.init(params))

    def update(
        grads: optax.Updates,
        state: SAMState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, SAMState]:
        del extra_args
        if params is None:
            raise ValueError("SAM needs params: call tx.update(grads, state, params, grad_fn=grad_fn).")
        if grad_fn is None:
            raise ValueError(
                "SAM needs grad_fn=<params -> gradient of the batch loss>: call "
                "tx.update(grads, state, params, grad_fn=grad_fn)."
            )
        descent = descent_gradient(grads, params, grad_fn, rho_fn(state.count))
        updates, base_state = base.update(descent, state.base_state, params)
        return updates, SAMState(count=optax.safe_increment(state.count), base_state=base_state)

    return optax.GradientTransformationExtraArgs(init, update)


def sam(
    base: optax.GradientTransformation,
    rho: ScalarOrSchedule,
    *,
    adaptive: bool = False,
    eta: float = 0.0,
    renormalize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """SAM (Foret et al. 2020), ASAM (Kwon et al. 2021) and SSAM (Tan et al. 2024) around any optimizer.

    One ``update`` is one whole step: ``grads`` is the loss gradient at ``params``; ``grad_fn`` is
    called once, at ``params + e`` (``ascent_perturbation``); the resulting descent gradient, SSAM-
    rescaled to ``||grads||`` if ``renormalize``, is passed to ``base``, whose updates are returned.

    Weight decay lives in ``base`` (``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))``):
    the ascent direction uses the loss gradient only, and the decay term is evaluated at the
    unperturbed ``params``. CSAM (Tan et al. 2025, arXiv:2505.23866, Algorithm 1) is this same
    transformation with ``grads`` the cross-entropy gradient and ``grad_fn`` the CSAM-loss
    gradient (``sam_jax.losses.csam_loss``).

    Example::

      tx = sam(optax.sgd(0.1, momentum=0.9), rho=0.05)
      state = tx.init(params)
      grad_fn = jax.grad(lambda p: loss(p, batch))
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)

    Args:
      base: optimizer that takes the descent step.
      rho: perturbation radius >= 0, or an ``optax.Schedule`` of the step count; ``rho = 0``
        reproduces ``base`` (at the price of a second gradient).
      adaptive: ASAM, ``e = rho * T^2 g / ||T g||`` with ``T = |w| + eta``.
      eta: ASAM offset >= 0; has no effect unless ``adaptive``.
      renormalize: SSAM, descent gradient rescaled to the norm of ``grads``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``SAMState``.

    Raises:
      ValueError: for ``rho < 0`` or ``eta < 0``.
    """

    def descent_gradient(grads, params, grad_fn, rho_t):
        perturbation = ascent_perturbation(grads, params, rho_t, adaptive=adaptive, eta=eta)
        descent = grad_fn(optax.apply_updates(params, perturbation))
        return match_norm(descent, grads) if renormalize else descent

    return sharpness_aware_transformation(base, rho, descent_gradient, eta=eta)
