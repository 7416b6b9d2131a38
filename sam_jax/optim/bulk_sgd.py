"""BulkSGD: the top-k Hessian eigendirections of the batch loss projected out of the gradient.

References:
  Song, Ahn & Yun, 2024. Does SGD really happen in tiny subspaces? ICLR 2025, arXiv:2405.16002
  (Bulk-SGD, the update projected onto the orthogonal complement of the dominant subspace).
  Morosini, Gjika, Poggio & Beneventano, 2026. Too Sharp, Too Sure: When Calibration Follows
  Curvature. arXiv:2604.20614 (Sec. 3.2 and App. C.2: BulkSGD with k = 1, 3, 5 as a directional
  intervention on calibration).

Song et al. show that SGD's progress happens in the "bulk" of the Hessian spectrum while the
gradient's component along the few top ("dominant") eigenvectors only makes the iterates bounce
across the valley. ``project_out_top_hessian_directions`` removes that component from whatever
updates reach it, so it composes with any optax optimizer placed after it in a chain;
``bulk_sgd`` is the chain with SGD. Each step finds the eigenvectors with ``num_iters`` Lanczos
steps on the current batch's Hessian, so it costs one linearisation of the gradient plus
``num_iters`` Hessian-vector products on top of the base optimizer.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.curvature.lanczos import eigenvalues

GradFn = Callable[[optax.Params], optax.Updates]
HvpFn = Callable[[optax.Params, optax.Params], optax.Params]


class HessianProjectionState(NamedTuple):
    """State of ``project_out_top_hessian_directions``."""

    key: jax.Array  # PRNG key of the Lanczos starting vectors, split every step


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


def project_out_top_hessian_directions(
    k: int, *, num_iters: int = 20, seed: int = 0
) -> optax.GradientTransformationExtraArgs:
    """Removes from the updates their components along the top-``k`` Hessian eigenvectors.

    The gradient projection of Bulk-SGD (Song, Ahn & Yun 2024, arXiv:2405.16002), as a
    transformation to chain *before* an optax optimizer::

      tx = optax.chain(
          optax.clip_by_global_norm(1.0),                 # acts on the raw gradient
          project_out_top_hessian_directions(k=3),        # u - sum_i (v_i . u) v_i
          optax.sgd(optax.cosine_decay_schedule(0.05, 10_000), momentum=0.9),
      )
      updates, state = tx.update(grads, state, params, grad_fn=jax.grad(lambda p: loss(p, batch)))

    Each ``update`` computes the top-``k`` Ritz vectors ``v_i`` of the Hessian of the current batch
    loss at ``params`` by Lanczos (``num_iters`` steps from a random start drawn from the state's
    key) and returns ``u - sum_i (v_i . u) v_i`` for the incoming updates ``u``. The Hessian is
    reached through one of two extra arguments of ``update``: ``hvp_fn(params, v) -> H v``, or
    ``grad_fn(params) -> gradient of the batch loss`` (the train loop's SAM convention), which is
    linearised once per step so that every product reuses its forward and backward pass.

    Args:
      k: number of top eigendirections removed (the calibration paper uses 1, 3 and 5).
      num_iters: Lanczos steps (Hessian-vector products) per update, at least ``k``.
      seed: seed of the PRNG key of the Lanczos starting vectors.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``HessianProjectionState``; ``update``
      needs ``params`` and one of ``hvp_fn`` / ``grad_fn``.

    Raises:
      ValueError: for ``k < 1`` or ``num_iters < k``.
    """
    if k < 1:
        raise ValueError(f"k={k}: BulkSGD removes at least one eigendirection; use sgd for k=0.")
    if num_iters < k:
        raise ValueError(f"num_iters={num_iters} < k={k}: Lanczos needs at least k steps.")

    def init(params: optax.Params) -> HessianProjectionState:
        del params
        return HessianProjectionState(jax.random.PRNGKey(seed))

    def update(
        updates: optax.Updates,
        state: HessianProjectionState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        hvp_fn: HvpFn | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, HessianProjectionState]:
        del extra_args
        if params is None or (grad_fn is None and hvp_fn is None):
            raise ValueError(
                "project_out_top_hessian_directions.update needs params and a grad_fn or hvp_fn keyword argument."
            )
        if hvp_fn is not None:

            def matvec(v):
                return hvp_fn(params, v)
        else:
            _, matvec = jax.linearize(grad_fn, params)
        key, lanczos_key = jax.random.split(state.key)
        _, vectors = eigenvalues(matvec, params, k=k, num_iters=num_iters, key=lanczos_key)
        return project_out(updates, vectors), HessianProjectionState(key)

    return optax.GradientTransformationExtraArgs(init, update)


def bulk_sgd(
    learning_rate: optax.ScalarOrSchedule,
    k: int,
    *,
    num_iters: int = 20,
    momentum: float = 0.0,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """BulkSGD (Song, Ahn & Yun 2024, arXiv:2405.16002; Morosini et al. 2026, App. C.2).

    ``optax.chain(project_out_top_hessian_directions(k, num_iters=num_iters, seed=seed),
    optax.sgd(learning_rate, momentum))``: SGD (with heavy-ball momentum when ``momentum > 0``) on
    the gradient with its top-``k`` Hessian components removed. ``update`` needs ``params`` and
    ``grad_fn`` or ``hvp_fn`` (see ``project_out_top_hessian_directions``).

    Example::

      opt = bulk_sgd(0.05, k=3)
      updates, state = opt.update(grads, state, params, grad_fn=lambda p: jax.grad(loss)(p, batch))

    Args:
      learning_rate: step size, constant or schedule.
      k: number of top eigendirections removed (the calibration paper uses 1, 3 and 5).
      num_iters: Lanczos steps (Hessian-vector products) per update, at least ``k``.
      momentum: heavy-ball momentum in [0, 1) of the SGD step applied to the projected gradient.
      seed: seed of the PRNG key of the Lanczos starting vectors.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: for ``k < 1``, ``num_iters < k`` or ``momentum`` outside [0, 1).
    """
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum={momentum} must lie in [0, 1).")
    return optax.chain(
        project_out_top_hessian_directions(k, num_iters=num_iters, seed=seed),
        optax.sgd(learning_rate, momentum=momentum or None),
    )
