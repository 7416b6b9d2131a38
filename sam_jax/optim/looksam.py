"""LookSAM: the SAM gradient every k steps, its orthogonal part reused in between, as one optax step.

LookSAM (Liu et al. 2022, Algorithm 1) splits the SAM gradient ``g_s`` into its projection on the
clean gradient ``g`` and the rest ``g_v``, which changes slowly over steps, and recomputes
``g_s`` only every ``k`` steps (``||.||`` the global L2 norm, ``t`` counted from 0):

    t mod k == 0:  g_s = grad L(w + rho g / ||g||)                (two gradient passes)
                   g_v = g_s - (<g, g_s> / ||g||^2) g              (stored)
    otherwise:     g_s = g + alpha (||g|| / ||g_v||) g_v           (one gradient pass)
    updates = base.update(g_s, ...)

The paper writes ``g_v = g_s - ||g_s|| cos(theta) g / ||g||`` with ``cos(theta)`` the cosine
between ``g`` and ``g_s``; that is the projection above.

References:
  Liu, Mai, Chen, Hsieh & You, 2022. Towards Efficient and Scalable Sharpness-Aware Minimization.
  CVPR 2022, arXiv:2203.02714.
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.optim.sam import (
    GradFn,
    ScalarOrSchedule,
    ascent_perturbation,
    match_norm,
    orthogonal_component,
    validated_rho_schedule,
)


def _cast_like(tree: optax.Updates, like: optax.Updates) -> optax.Updates:
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


class LookSAMState(NamedTuple):
    """State of ``looksam``."""

    count: jax.Array  # number of steps taken; every k-th (from 0) takes the SAM gradient
    base_state: optax.OptState  # state of the wrapped base optimizer
    orthogonal: optax.Updates  # g_v of the last SAM step, like params (zeros before the first)


def looksam(
    base: optax.GradientTransformation,
    rho: ScalarOrSchedule,
    *,
    k: int,
    alpha: float,
) -> optax.GradientTransformationExtraArgs:
    """LookSAM (Liu et al. 2022, arXiv:2203.02714, Algorithm 1) around any optimizer.

    ``update(grads, state, params, grad_fn=grad_fn)`` is one whole step (module docstring). At
    steps ``0, k, 2k, ...`` ``grad_fn`` is called at ``params + rho g / ||g||`` and ``base``
    receives that SAM gradient, exactly as ``sam``; at the other steps ``base`` receives
    ``g + alpha ||g|| / ||g_v|| g_v`` and ``grad_fn`` is not evaluated. The two branches are a
    ``jax.lax.cond`` on the step count, so in a jitted step the second gradient pass runs only on
    the SAM steps (XLA executes one branch of a conditional); ``k = 1`` is ``sam`` step for step.
    A zero ``g_v`` (``g_s`` parallel to ``g``) adds nothing (no NaN).

    The cond must not be ``vmap``-ed over a batched predicate (XLA would then run both branches);
    the step count is the same for every example, so the train step never does.

    Weight decay lives in ``base``, as for ``sam``: ``g`` and ``g_s`` are loss gradients.

    Example::

      tx = looksam(optax.sgd(0.1, momentum=0.9), rho=0.05, k=5, alpha=0.7)
      state = tx.init(params)
      grad_fn = jax.grad(lambda p: loss(p, batch))
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)

    Args:
      base: optimizer that takes the descent step.
      rho: perturbation radius >= 0, or an ``optax.Schedule`` of the step count.
      k: a positive integer, the SAM gradient's period (``k = 1``: every step).
      alpha: weight >= 0 of the reused orthogonal component.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``LookSAMState``; ``update`` requires
      ``params`` and ``grad_fn``.

    Raises:
      ValueError: for ``rho < 0``, ``k`` not a positive integer, or ``alpha < 0``.
    """
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer (the SAM gradient every k steps), got {k!r}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (weight of LookSAM's reused component), got {alpha}.")
    rho_fn = validated_rho_schedule(rho, 0.0)

    def init(params: optax.Params) -> LookSAMState:
        return LookSAMState(
            count=jnp.zeros([], jnp.int32), base_state=base.init(params), orthogonal=optax.tree.zeros_like(params)
        )

    def update(
        grads: optax.Updates,
        state: LookSAMState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, LookSAMState]:
        del extra_args
        if params is None or grad_fn is None:
            raise ValueError(
                "LookSAM needs params and grad_fn=<params -> gradient of the batch loss>: call "
                "tx.update(grads, state, params, grad_fn=grad_fn)."
            )

        def sam_step(orthogonal: optax.Updates) -> tuple[optax.Updates, optax.Updates]:
            perturbation = ascent_perturbation(grads, params, rho_fn(state.count))
            sam_gradient = grad_fn(optax.apply_updates(params, perturbation))
            new_orthogonal = orthogonal_component(sam_gradient, grads)
            # Both branches of the cond must return the same dtypes: those of grads and of the state.
            return _cast_like(sam_gradient, grads), _cast_like(new_orthogonal, orthogonal)

        def reuse_step(orthogonal: optax.Updates) -> tuple[optax.Updates, optax.Updates]:
            # alpha ||g|| / ||g_v|| g_v is g_v rescaled to alpha times the norm of g (match_norm).
            rescaled = match_norm(orthogonal, grads)
            return jax.tree.map(lambda g, v: (g + alpha * v).astype(g.dtype), grads, rescaled), orthogonal

        descent, orthogonal = jax.lax.cond(state.count % k == 0, sam_step, reuse_step, state.orthogonal)
        updates, base_state = base.update(descent, state.base_state, params)
        return updates, LookSAMState(optax.safe_increment(state.count), base_state, orthogonal)

    return optax.GradientTransformationExtraArgs(init, update)
