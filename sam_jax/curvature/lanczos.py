"""Lanczos tridiagonalisation with full reorthogonalisation, and extreme eigenpairs from it.

The Krylov basis is kept over the flattened parameters as ``[num_blocks, 8, n]`` blocks of rows,
so reorthogonalising against it is dense matrix-vector work rather than a loop over pytree leaves.
Each step applies the three-term recurrence first; a block Gram-Schmidt pass over the blocks
filled so far then only removes rounding-level components, and a second pass runs (under
``lax.cond``) only when the first removed a noticeable part of the vector -- the "twice is
enough" test of Daniel, Gragg, Kaufman and Stewart (1976). Reading only the filled blocks, each
once per pass, is what keeps this bookkeeping small next to the matrix-vector products on large
bases (matfree instead runs two classical passes over the whole preallocated basis each step).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sam_jax.curvature.products import hessian_operator

Params = Any
Matvec = Callable[[Params], Params]

# Keep the second Gram-Schmidt pass when the first shrinks the vector below this fraction (DGKS).
_REORTH_THRESHOLD = 0.7071067811865476
# Rows per basis block: reorthogonalisation reads only the blocks filled so far.
_BLOCK_ROWS = 8
_WHICH = ("largest", "smallest")


class LanczosResult(NamedTuple):
    """Output of ``lanczos``.

    Attributes:
      diagonal: ``[m]`` diagonal ``alpha`` of the tridiagonal matrix ``T = Q^T A Q``.
      off_diagonal: ``[m - 1]`` off-diagonal ``beta`` of ``T``; zero where an invariant subspace
        was reached and the iteration restarted from a fresh orthogonal direction.
      basis: ``[m, n]`` orthonormal Lanczos vectors ``Q^T`` (rows) over the flattened parameters.
    """

    diagonal: jax.Array
    off_diagonal: jax.Array
    basis: jax.Array


def tridiagonal(result: LanczosResult) -> jax.Array:
    """Returns the dense ``[m, m]`` tridiagonal matrix ``T`` of a ``LanczosResult``."""
    return jnp.diag(result.diagonal) + jnp.diag(result.off_diagonal, 1) + jnp.diag(result.off_diagonal, -1)


def _orthogonalise(w: jax.Array, blocks: jax.Array, num_blocks: jax.Array) -> jax.Array:
    """Block Gram-Schmidt of ``w`` against the first ``num_blocks`` blocks of the basis.

    Only the filled blocks are read, and each block is used twice while it is in cache, so a
    pass costs about one read of the filled part of the basis instead of two of all of it.
    """

    def body(i, w):
        block = blocks[i]
        return w - block.T @ (block @ w)

    return jax.lax.fori_loop(0, num_blocks, body, w)


def lanczos(matvec: Matvec, v0: Params, num_iters: int) -> LanczosResult:
    """Runs ``num_iters`` Lanczos steps on a symmetric operator (Lanczos 1950; Golub & Van Loan, Alg. 10.1.1).

    Full reorthogonalisation keeps the basis orthonormal to working precision, so the Ritz values
    do not acquire spurious copies and converged eigenvalues are accurate to rounding. If the
    Krylov space becomes invariant (``beta`` below ``sqrt(eps) ||A q_j||``, e.g. for a
    low-rank Gauss-Newton matrix) the iteration continues from a random vector orthogonal to the
    basis and records ``beta = 0``, so ``T`` stays exactly block tridiagonal. Traceable under
    ``jit``; ``num_iters`` must be static and at most the number of parameters.

    Args:
      matvec: symmetric linear map from a params-shaped pytree to one.
      v0: nonzero starting pytree (normalised here).
      num_iters: number of steps ``m``, i.e. of matrix-vector products.

    Returns:
      A ``LanczosResult`` with ``T`` of size ``m`` and the ``[m, n]`` orthonormal basis.
    """
    flat_v0, unravel = ravel_pytree(v0)
    size, dtype = flat_v0.size, flat_v0.dtype
    num_blocks = -(-(num_iters + 1) // _BLOCK_ROWS)
    breakdown_tol = jnp.sqrt(jnp.finfo(dtype).eps)

    def flat_matvec(x: jax.Array) -> jax.Array:
        return ravel_pytree(matvec(unravel(x)))[0]

    def step(j, carry):
        blocks, alphas, betas = carry
        filled = j // _BLOCK_ROWS + 1
        q = blocks[j // _BLOCK_ROWS, j % _BLOCK_ROWS]
        w = flat_matvec(q)
        product_norm = jnp.linalg.norm(w)
        alpha = jnp.vdot(q, w)
        w = w - alpha * q
        w = w - betas[j - 1] * blocks[(j - 1) // _BLOCK_ROWS, (j - 1) % _BLOCK_ROWS]
        norm_before = jnp.linalg.norm(w)
        w = _orthogonalise(w, blocks, filled)
        w = jax.lax.cond(
            jnp.linalg.norm(w) < _REORTH_THRESHOLD * norm_before,
            lambda w: _orthogonalise(w, blocks, filled),
            lambda w: w,
            w,
        )
        # The Gram-Schmidt passes also removed the rounding-level remainder along q from w.
        beta = jnp.linalg.norm(w)

        def restart(_):
            fresh = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), j), (size,), dtype)
            fresh = _orthogonalise(_orthogonalise(fresh, blocks, filled), blocks, filled)
            return fresh / jnp.linalg.norm(fresh), jnp.zeros((), dtype)

        q_next, beta = jax.lax.cond(beta <= breakdown_tol * product_norm, restart, lambda _: (w / beta, beta), None)
        blocks = blocks.at[(j + 1) // _BLOCK_ROWS, (j + 1) % _BLOCK_ROWS].set(q_next)
        return blocks, alphas.at[j].set(alpha), betas.at[j].set(beta)

    blocks = jnp.zeros((num_blocks, _BLOCK_ROWS, size), dtype)
    blocks = blocks.at[0, 0].set(flat_v0 / jnp.linalg.norm(flat_v0))
    alphas = jnp.zeros((num_iters,), dtype)
    betas = jnp.zeros((num_iters,), dtype)
    blocks, alphas, betas = jax.lax.fori_loop(0, num_iters, step, (blocks, alphas, betas))
    basis = blocks.reshape(num_blocks * _BLOCK_ROWS, size)[:num_iters]
    return LanczosResult(alphas, betas[:-1], basis)


def eigenvalues(
    matvec: Matvec,
    params: Params,
    *,
    k: int = 1,
    num_iters: int = 30,
    which: str = "largest",
    key: jax.Array | None = None,
) -> tuple[jax.Array, Params]:
    """Extreme eigenpairs of a symmetric operator by Lanczos and Rayleigh-Ritz on ``T``.

    Args:
      matvec: symmetric linear map on params-shaped pytrees (e.g. ``hessian_operator(...)``),
        or a scalar loss ``loss_fn(params) -> ()``, which stands for its Hessian at ``params``
        (told apart by the output shape: a matvec returns a params-shaped pytree).
      params: pytree fixing the structure, shapes and dtype of the vectors (and the point at
        which a loss's Hessian is taken).
      k: number of eigenpairs.
      num_iters: Lanczos steps (matrix-vector products); capped at the number of parameters.
      which: ``"largest"`` (algebraically, not in magnitude) or ``"smallest"``.
      key: PRNG key for the Gaussian starting vector; ``PRNGKey(0)`` when ``None``.

    Returns:
      ``(values, vectors)``: ``values`` is ``[k]``, sorted from the most extreme inward
      (descending for "largest", ascending for "smallest"); ``vectors`` is a pytree like
      ``params`` whose leaves carry a leading axis ``k`` with the unit-norm Ritz vectors.
    """
    if which not in _WHICH:
        raise ValueError(f"which={which!r} is not supported; use one of {_WHICH}.")
    flat, unravel = ravel_pytree(params)
    if flat.size > 1 and getattr(jax.eval_shape(matvec, params), "shape", None) == ():
        matvec = hessian_operator(matvec, params)
    num_iters = min(num_iters, flat.size)
    if not 1 <= k <= num_iters:
        raise ValueError(
            f"k={k} eigenpairs need 1 <= k <= num_iters={num_iters} (capped at the number of "
            "parameters); raise num_iters or lower k."
        )
    key = jax.random.PRNGKey(0) if key is None else key
    v0 = unravel(jax.random.normal(key, flat.shape, flat.dtype))
    result = lanczos(matvec, v0, num_iters)
    ritz_values, ritz_coordinates = jnp.linalg.eigh(tridiagonal(result))
    order = jnp.arange(k) if which == "smallest" else num_iters - 1 - jnp.arange(k)
    vectors = ritz_coordinates[:, order].T @ result.basis
    return ritz_values[order], jax.vmap(unravel)(vectors)
