"""Variance-suppressed sharpness-aware optimisation (VaSSO) as one optax step.

VaSSO (Li & Giannakis 2023, Sec. 3) keeps SAM's step but takes the ascent direction from an
exponential moving average of the stochastic gradients instead of the current minibatch gradient:

    d_t = (1 - theta) d_{t-1} + theta g_t       (ascent direction; d_0 = g_0, see below)
    e_t = rho d_t / ||d_t||                      (perturbation, ||.|| the global L2 norm)
    updates = base.update(grad L(w_t + e_t), ...)

So VaSSO is ``sam(base, rho)`` fed with ``d_t`` in place of ``g_t`` as the ascent direction;
this module keeps ``d`` in the state and delegates the rest to :func:`sam_jax.optim.sam.sam`.

References:
  Li & Giannakis, 2023. Enhancing Sharpness-Aware Optimization Through Variance Suppression.
  NeurIPS 2023, arXiv:2309.15639. Authors' code: github.com/BingcongLi/VaSSO.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.optim.sam import GradFn, SAMState, ScalarOrSchedule, sam


class VASSOState(NamedTuple):
    """State of ``vasso``."""

    count: jax.Array  # number of steps taken; indexes a ``rho`` schedule and marks the first step
    base_state: optax.OptState  # state of the wrapped base optimizer
    ascent_direction: optax.Updates  # the moving average d of the loss gradients, like params


def vasso(
    base: optax.GradientTransformation,
    rho: ScalarOrSchedule,
    *,
    theta: float,
) -> optax.GradientTransformationExtraArgs:
    """VaSSO (Li & Giannakis 2023, arXiv:2309.15639, Sec. 3) around any optimizer.

    One ``update`` is one whole step: ``grads`` (the loss gradient at ``params``) enters the moving
    average ``d = (1 - theta) d + theta grads``; ``grad_fn`` is called once, at
    ``params + rho d / ||d||``; the resulting descent gradient is passed to ``base``, whose updates
    are returned. ``theta = 1`` is SAM exactly; smaller ``theta`` averages over more minibatches,
    which suppresses the variance of the adversary (the paper's point).

    Initialisation: the first step sets ``d_0 = g_0``, as the authors' code does (the paper's
    generic SAM loop leaves ``d_{-1}`` open). Starting from ``d_{-1} = 0`` instead would give the
    same first perturbation (it is normalised) but a ``d`` shrunk by ``theta`` afterwards, so the
    early steps would lean on the first gradient less. A zero ``d`` gives a zero perturbation,
    never NaN (``ascent_perturbation``'s guard).

    Weight decay lives in ``base``, as for ``sam``: ``d`` averages loss gradients only.

    Example::

      tx = vasso(optax.sgd(0.1, momentum=0.9), rho=0.1, theta=0.9)
      state = tx.init(params)
      grad_fn = jax.grad(lambda p: loss(p, batch))
      updates, state = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)

    Args:
      base: optimizer that takes the descent step.
      rho: perturbation radius >= 0, or an ``optax.Schedule`` of the step count.
      theta: weight of the newest gradient in the moving average, in (0, 1]; the authors' code
        defaults to 0.9 (``--theta``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``VASSOState``; ``update`` requires
      ``params`` and ``grad_fn``.

    Raises:
      ValueError: for ``rho < 0`` or ``theta`` outside (0, 1].
    """
    if not 0 < theta <= 1:
        raise ValueError(
            f"theta must be in (0, 1] (weight of the newest gradient in VaSSO's average), got {theta}; "
            "theta = 1 is SAM."
        )
    sharpness_aware = sam(base, rho)  # validates rho

    def init(params: optax.Params) -> VASSOState:
        sam_state = sharpness_aware.init(params)
        return VASSOState(
            count=sam_state.count,
            base_state=sam_state.base_state,
            ascent_direction=jax.tree.map(jnp.zeros_like, params),
        )

    def update(
        grads: optax.Updates,
        state: VASSOState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, VASSOState]:
        del extra_args
        # The newest gradient's weight is 1 at the first step, so that d_0 = g_0.
        weight = jnp.where(state.count == 0, 1.0, theta)
        direction = jax.tree.map(
            lambda d, g: ((1.0 - weight) * d + weight * g).astype(d.dtype), state.ascent_direction, grads
        )
        updates, sam_state = sharpness_aware.update(
            direction, SAMState(state.count, state.base_state), params, grad_fn=grad_fn
        )
        return updates, VASSOState(sam_state.count, sam_state.base_state, direction)

    return optax.GradientTransformationExtraArgs(init, update)
