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

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
      num_steps: scalar, the steps taken: ``m`` unless a tolerance stopped the iteration early,
        in which case the entries past ``num_steps`` are zero.
      residual: scalar ``beta_{num_steps}``, the norm of the part of ``A q_last`` outside the
        basis; the residual of a Ritz pair is it times the last coordinate of the pair.
    """

    diagonal: jax.Array
    off_diagonal: jax.Array
    basis: jax.Array
    num_steps: jax.Array
    residual: jax.Array


class RitzPairs(NamedTuple):
    """Output of ``ritz_pairs``.

    Attributes:
      values: ``[k]`` Ritz values, most extreme first.
      vectors: pytree like the parameters whose leaves carry a leading axis ``k``: unit Ritz vectors.
      num_steps: scalar, Lanczos steps (matrix-vector products) taken.
      residual_norms: ``[k]`` residual norms ``r = ||A y - theta y||`` of the pairs, computed
        from ``T`` as ``|beta_m s_m|``: an interval ``[theta - r, theta + r]`` holds an eigenvalue
        of ``A`` (Parlett 1998, "The Symmetric Eigenvalue Problem", Thm. 4.5.1), so ``r`` bounds
        the error of ``theta`` as an approximation of that eigenvalue. (The sharper
        ``r^2 / gap`` needs the gap to the rest of the spectrum, which a few Ritz values
        overestimate: after two warm-started steps it understated errors tenfold on a real
        trajectory.)
    """

    values: jax.Array
    vectors: Any
    num_steps: jax.Array
    residual_norms: jax.Array


def tridiagonal(result: LanczosResult) -> jax.Array:
    """Returns the dense ``[m, m]`` tridiagonal matrix ``T`` of a ``LanczosResult`` (zero past ``num_steps``)."""
    return jnp.diag(result.diagonal) + jnp.diag(result.off_diagonal, 1) + jnp.diag(result.off_diagonal, -1)


def _ritz_decomposition(
    diagonal: jax.Array, off_diagonal: jax.Array, num_steps: jax.Array, which: str
) -> tuple[jax.Array, jax.Array]:
    """Eigen-decomposition of the leading ``num_steps`` block of ``T`` at a fixed array size.

    The unused diagonal entries are set beyond the Gershgorin interval of the used block (below it
    for "largest", above for "smallest"), so they never rank among the extreme Ritz values and
    ``eigh`` keeps a static shape inside ``jit`` and ``while_loop``.

    Returns:
      ``(values, coordinates)``: ascending eigenvalues and eigenvectors as columns (rows past
      ``num_steps`` zeroed).
    """
    size = diagonal.shape[0]
    index = jnp.arange(size)
    used = index < num_steps
    off = jnp.where(index[:-1] < num_steps - 1, off_diagonal, 0.0)
    radius = jnp.abs(jnp.pad(off, (0, 1))) + jnp.abs(jnp.pad(off, (1, 0)))
    low = jnp.min(jnp.where(used, diagonal - radius, jnp.inf))
    high = jnp.max(jnp.where(used, diagonal + radius, -jnp.inf))
    spread = (high - low) + jnp.abs(high) + jnp.abs(low)
    pad = low - spread if which == "largest" else high + spread
    matrix = jnp.diag(jnp.where(used, diagonal, pad)) + jnp.diag(off, 1) + jnp.diag(off, -1)
    values, coordinates = jnp.linalg.eigh(matrix)
    return values, jnp.where(used[:, None], coordinates, 0.0)


def _extreme_ritz(
    diagonal: jax.Array, off_diagonal: jax.Array, num_steps: jax.Array, residual: jax.Array, k: int, which: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The ``k`` extreme Ritz values, their coordinates in the basis, and their residual norms."""
    size = diagonal.shape[0]
    values, coordinates = _ritz_decomposition(diagonal, off_diagonal, num_steps, which)
    order = jnp.arange(k) if which == "smallest" else size - 1 - jnp.arange(k)
    last_row = coordinates[jnp.maximum(num_steps - 1, 0)]
    return values[order], coordinates[:, order], jnp.abs(residual * last_row[order])


def _orthogonalise(w: jax.Array, blocks: jax.Array, num_blocks: jax.Array) -> jax.Array:
    """Block Gram-Schmidt of ``w`` against the first ``num_blocks`` blocks of the basis.

    Only the filled blocks are read, and each block is used twice while it is in cache, so a
    pass costs about one read of the filled part of the basis instead of two of all of it.
    """

    def body(i, w):
        block = blocks[i]
        return w - block.T @ (block @ w)

    return jax.lax.fori_loop(0, num_blocks, body, w)


def _tolerances(tol: float | Sequence[float], k: int) -> np.ndarray:
    """``tol`` as ``k`` per-value tolerances; raises ``ValueError`` on a negative one or a wrong length."""
    tolerances = np.asarray(tol, np.float64)
    if tolerances.ndim == 1 and tolerances.size != k:
        raise ValueError(f"tol={tol!r} gives {tolerances.size} tolerances for k={k} Ritz values; give one or k.")
    if tolerances.ndim > 1 or (tolerances < 0).any():
        raise ValueError(f"tol={tol!r} must be >= 0 (0 runs all num_iters steps), one value or one per Ritz value.")
    return np.broadcast_to(tolerances, (k,))


def lanczos(
    matvec: Matvec,
    v0: Params,
    num_iters: int,
    *,
    tol: float | Sequence[float] = 0.0,
    k: int = 1,
    which: str = "largest",
) -> LanczosResult:
    """Runs up to ``num_iters`` Lanczos steps on a symmetric operator (Lanczos 1950; Golub & Van Loan, Alg. 10.1.1).

    Full reorthogonalisation keeps the basis orthonormal to working precision, so the Ritz values
    do not acquire spurious copies and converged eigenvalues are accurate to rounding. If the
    Krylov space becomes invariant (``beta`` below ``sqrt(eps) ||A q_j||``, e.g. for a
    low-rank Gauss-Newton matrix) the iteration continues from a random vector orthogonal to the
    basis and records ``beta = 0``, so ``T`` stays exactly block tridiagonal. Traceable under
    ``jit``; ``num_iters`` must be static and at most the number of parameters.

    With ``tol > 0`` the iteration stops as soon as the ``k`` extreme Ritz values (``which``) all
    have residual norms (``RitzPairs.residual_norms``) below ``tol`` times their magnitude (a
    sequence gives each of the ``k`` its own tolerance, the most extreme first);
    arrays keep their size ``num_iters`` and ``num_steps`` says how many steps were taken.

    Args:
      matvec: symmetric linear map from a params-shaped pytree to one.
      v0: nonzero starting pytree (normalised here).
      num_iters: maximum number of steps ``m``, i.e. of matrix-vector products.
      tol: relative accuracy at which to stop early, one for all ``k`` values or one per value;
        0 runs all ``num_iters`` steps.
      k: number of extreme Ritz values the stopping test watches.
      which: ``"largest"`` or ``"smallest"``: which end of the spectrum the stopping test watches.

    Returns:
      A ``LanczosResult`` with ``T`` of size ``m`` and the ``[m, n]`` orthonormal basis.
    """
    if which not in _WHICH:
        raise ValueError(f"which={which!r} is not supported; use one of {_WHICH}.")
    flat_v0, unravel = ravel_pytree(v0)
    size, dtype = flat_v0.size, flat_v0.dtype
    watched = min(k, num_iters)
    tolerances = _tolerances(tol, watched)
    num_blocks = -(-(num_iters + 1) // _BLOCK_ROWS)
    breakdown_tol = jnp.sqrt(jnp.finfo(dtype).eps)

    def flat_matvec(x: jax.Array) -> jax.Array:
        return ravel_pytree(matvec(unravel(x)))[0]

    def step(carry):
        j, blocks, alphas, betas, _ = carry
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
        alphas, betas = alphas.at[j].set(alpha), betas.at[j].set(beta)
        converged = jnp.zeros((), bool)
        if tolerances.any():
            values, _, errors = _extreme_ritz(alphas, betas[:-1], j + 1, beta, watched, which)
            converged = (j + 1 >= k) & jnp.all(errors <= jnp.asarray(tolerances, dtype) * jnp.abs(values))
        return j + 1, blocks, alphas, betas, converged

    def not_done(carry):
        j, *_, converged = carry
        return (j < num_iters) & ~converged

    blocks = jnp.zeros((num_blocks, _BLOCK_ROWS, size), dtype)
    blocks = blocks.at[0, 0].set(flat_v0 / jnp.linalg.norm(flat_v0))
    alphas = jnp.zeros((num_iters,), dtype)
    betas = jnp.zeros((num_iters,), dtype)
    init = (jnp.zeros((), jnp.int32), blocks, alphas, betas, jnp.zeros((), bool))
    num_steps, blocks, alphas, betas, _ = jax.lax.while_loop(not_done, step, init)
    basis = blocks.reshape(num_blocks * _BLOCK_ROWS, size)[:num_iters]
    basis = jnp.where((jnp.arange(num_iters) < num_steps)[:, None], basis, 0.0)
    residual = betas[num_steps - 1]
    off_diagonal = jnp.where(jnp.arange(num_iters - 1) < num_steps - 1, betas[:-1], 0.0)
    return LanczosResult(alphas, off_diagonal, basis, num_steps, residual)


def ritz_pairs(
    matvec: Matvec | Callable[[Params], jax.Array],
    params: Params,
    *,
    k: int = 1,
    num_iters: int = 30,
    which: str = "largest",
    key: jax.Array | None = None,
    v0: Params | None = None,
    tol: float | Sequence[float] = 0.0,
) -> RitzPairs:
    """Extreme eigenpairs of a symmetric operator by Lanczos and Rayleigh-Ritz on ``T``, with accuracy.

    Args:
      matvec: symmetric linear map on params-shaped pytrees (e.g. ``hessian_operator(...)``),
        or a scalar loss ``loss_fn(params) -> ()``, which stands for its Hessian at ``params``
        (told apart by the output shape: a matvec returns a params-shaped pytree).
      params: pytree fixing the structure, shapes and dtype of the vectors (and the point at
        which a loss's Hessian is taken).
      k: number of eigenpairs.
      num_iters: maximum Lanczos steps (matrix-vector products); capped at the number of parameters.
      which: ``"largest"`` (algebraically, not in magnitude) or ``"smallest"``.
      key: PRNG key for the Gaussian starting vector; ``PRNGKey(0)`` when ``None``.
      v0: starting vector instead of a random one, e.g. the Ritz vector of a nearby operator (a
        warm start: the previous tracking point of a training run); an all-zero ``v0`` falls
        back to the random one, so a first call and later warm calls share one compilation.
      tol: stop once every residual norm is below ``tol`` times its value; a sequence of ``k``
        gives each pair its own (see ``lanczos``).

    Returns:
      A ``RitzPairs``: values sorted from the most extreme inward (descending for "largest",
      ascending for "smallest"), unit Ritz vectors, steps taken and residual norms.
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
    start = jax.random.normal(key, flat.shape, flat.dtype)
    if v0 is not None:
        warm = ravel_pytree(v0)[0].astype(flat.dtype)
        start = jnp.where(jnp.linalg.norm(warm) > 0, warm, start)
    result = lanczos(matvec, unravel(start), num_iters, tol=tol, k=k, which=which)
    values, coordinates, errors = _extreme_ritz(
        result.diagonal, result.off_diagonal, result.num_steps, result.residual, k, which
    )
    vectors = coordinates.T @ result.basis
    return RitzPairs(values, jax.vmap(unravel)(vectors), result.num_steps, errors)


def eigenvalues(
    matvec: Matvec | Callable[[Params], jax.Array],
    params: Params,
    *,
    k: int = 1,
    num_iters: int = 30,
    which: str = "largest",
    key: jax.Array | None = None,
    v0: Params | None = None,
    tol: float | Sequence[float] = 0.0,
) -> tuple[jax.Array, Params]:
    """Extreme eigenpairs ``(values, vectors)`` of a symmetric operator: ``ritz_pairs`` without its diagnostics.

    Arguments as in ``ritz_pairs``. Returns ``values`` ``[k]``, sorted from the most extreme
    inward, and ``vectors``, a pytree like ``params`` whose leaves carry a leading axis ``k``
    with the unit-norm Ritz vectors.
    """
    pairs = ritz_pairs(matvec, params, k=k, num_iters=num_iters, which=which, key=key, v0=v0, tol=tol)
    return pairs.values, pairs.vectors
