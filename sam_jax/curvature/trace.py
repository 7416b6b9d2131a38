"""Hutchinson's stochastic trace estimator with Rademacher probes.

References:
  Hutchinson, 1990. A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian
  Smoothing Splines. Communications in Statistics - Simulation and Computation 19(2).

Not jitted here (the functions take callables); call them inside your own ``jax.jit``.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sam_jax.curvature.products import hessian_operator

Params = Any
Matvec = Callable[[Params], Params]


def hutchinson_trace(matvec: Matvec, params: Params, *, num_probes: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Estimates ``tr(A)`` as the mean of ``z^T A z`` over Rademacher ``z`` (Hutchinson 1990).

    Rademacher probes give the smallest variance among i.i.d. probe distributions,
    ``2 * sum_{i != j} A_ij^2`` per probe. Probes run one after another (``lax.map``) so memory
    stays at one product.

    Args:
      matvec: symmetric linear map on params-shaped pytrees.
      params: pytree fixing the structure, shapes and dtype of the probes.
      num_probes: number of probes, at least 2 (the standard error needs two).
      key: PRNG key of the probes.

    Returns:
      ``(estimate, standard_error)``: the sample mean and its standard error
      ``std(ddof=1) / sqrt(num_probes)``.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes={num_probes}: need at least 2 probes for a standard error.")
    flat, unravel = ravel_pytree(params)
    probes = jax.random.rademacher(key, (num_probes, flat.size), flat.dtype)

    def quadratic_form(z: jax.Array) -> jax.Array:
        return jnp.vdot(z, ravel_pytree(matvec(unravel(z)))[0])

    samples = jax.lax.map(quadratic_form, probes)
    return jnp.mean(samples), jnp.std(samples, ddof=1) / jnp.sqrt(num_probes)


def hessian_trace(
    loss_fn: Callable[[Params, Any], jax.Array],
    params: Params,
    batch: Any,
    *,
    num_probes: int = 100,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Hutchinson estimate of the trace of the Hessian of ``loss_fn(params, batch)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: parameter pytree.
      batch: pytree of arrays passed to ``loss_fn``.
      num_probes: number of Rademacher probes (Hessian-vector products), at least 2.
      key: PRNG key of the probes (``PRNGKey(0)`` when ``None``).

    Returns:
      ``(estimate, standard_error)`` of ``tr(H)``.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    matvec = hessian_operator(lambda p: loss_fn(p, batch), params)
    return hutchinson_trace(matvec, params, num_probes=num_probes, key=key)
