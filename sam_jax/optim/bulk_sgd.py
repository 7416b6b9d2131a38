"""BulkSGD: SGD with the top-k Hessian eigendirections of the batch loss removed from the gradient.

Song, Ahn & Yun (2025) show that SGD's progress happens in the "bulk" of the Hessian spectrum
while the gradient's component along the few top ("dominant") eigenvectors only makes the
iterates bounce across the valley; BulkSGD projects that component out every step.
calibration-follows-curvature.txt (Sec. 3.2, App. C.2) uses it with k = 1, 3, 5 as a
directional intervention on calibration. Each step finds the eigenvectors with
``num_iters`` Lanczos steps on the current batch's Hessian, so it costs one linearisation of
the gradient plus ``num_iters`` Hessian-vector products on top of SGD.
"""
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from sam_jax.curvature.lanczos import eigenvalues

GradFn = Callable[[optax.Params], optax.Updates]
HvpFn = Callable[[optax.Params, optax.Params], optax.Params]


class BulkSGDState(NamedTuple):
    """State of ``bulk_sgd``."""

    key: jax.Array  # PRNG key of the Lanczos starting vectors, split every step
    base_state: optax.OptState  # state of the SGD (with momentum) applied to the projection


def project_out(grads: optax.Updates, vectors: optax.Params) -> optax.Updates:
    """Returns ``g - sum_i (u_i . g) u_i`` for orthonormal ``u_i`` stacked on a leading axis.

    Args:
      grads: pytree ``g``.
      vectors: pytree like ``grads`` whose leaves have a leading axis ``k`` (the ``u_i``).

    Returns:
      The component of ``g`` orthogonal to ``span(u_1..u_k)``.
    """
    coefficients = sum(
        jnp.tensordot(u.reshape(u.shape[0], -1), g.ravel(), axes=1)
        for g, u in zip(jax.tree.leaves(grads), jax.tree.leaves(vectors))
    )
    return jax.tree.map(lambda g, u: g - jnp.tensordot(coefficients, u, axes=1), grads, vectors)


def bulk_sgd(
    learning_rate: Union[float, optax.Schedule],
    k: int,
    *,
    num_iters: int = 20,
    momentum: float = 0.0,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """BulkSGD (Song et al. 2025; calibration-follows-curvature.txt, App. C.2).

    Each ``update`` computes the top-``k`` eigenvectors ``u_i`` of the Hessian of the current
    batch loss by Lanczos and hands ``g - sum_i (u_i . g) u_i`` to ``optax.sgd(learning_rate,
    momentum)``. The Hessian is reached through one of two extra arguments of ``update``:
    ``hvp_fn(params, v) -> H v``, or ``grad_fn(params) -> gradient of the batch loss`` (the loop's
    SAM convention), which is linearised once per step so that every product reuses its forward
    and backward pass.

    Example::

      opt = bulk_sgd(0.05, k=3)
      updates, state = opt.update(grads, state, params, grad_fn=lambda p: jax.grad(loss)(p, batch))

    Args:
      learning_rate: step size, constant or schedule.
      k: number of top eigendirections removed (the paper uses 1, 3 and 5).
      num_iters: Lanczos steps (Hessian-vector products) per update, at least ``k``.
      momentum: heavy-ball momentum of the SGD step applied to the projected gradient.
      seed: seed of the PRNG key of the Lanczos starting vectors.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; ``update`` needs ``params`` and one of
      ``hvp_fn`` / ``grad_fn``.
    """
    if k < 1:
        raise ValueError(f"k={k}: BulkSGD removes at least one eigendirection; use sgd for k=0.")
    if num_iters < k:
        raise ValueError(f"num_iters={num_iters} < k={k}: Lanczos needs at least k steps.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum={momentum} must lie in [0, 1).")
    base = optax.sgd(learning_rate, momentum=momentum or None)

    def init(params: optax.Params) -> BulkSGDState:
        return BulkSGDState(jax.random.PRNGKey(seed), base.init(params))

    def update(
        grads: optax.Updates,
        state: BulkSGDState,
        params: Optional[optax.Params] = None,
        *,
        grad_fn: Optional[GradFn] = None,
        hvp_fn: Optional[HvpFn] = None,
        **extra_args,
    ) -> tuple[optax.Updates, BulkSGDState]:
        del extra_args
        if params is None or (grad_fn is None and hvp_fn is None):
            raise ValueError("bulk_sgd.update needs params and a grad_fn or hvp_fn keyword argument.")
        if hvp_fn is not None:
            def matvec(v):
                return hvp_fn(params, v)
        else:
            _, matvec = jax.linearize(grad_fn, params)
        key, lanczos_key = jax.random.split(state.key)
        _, vectors = eigenvalues(matvec, params, k=k, num_iters=num_iters, key=lanczos_key)
        updates, base_state = base.update(project_out(grads, vectors), state.base_state, params)
        return updates, BulkSGDState(key, base_state)

    return optax.GradientTransformationExtraArgs(init, update)
