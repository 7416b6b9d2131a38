"""Spectral density by stochastic Lanczos quadrature.

References:
  Ghorbani, Krishnan & Xiao, 2019. An Investigation into Neural Net Optimization via Hessian
  Eigenvalue Density. ICML 2019, arXiv:1901.10159 (Sec. 3; eq. 8 for the Gaussian smoothing).
  Golub & Meurant, 2009. Matrices, Moments and Quadrature with Applications. Princeton
  University Press.

Not jitted here (``spectral_density`` takes a callable); call it inside your own ``jax.jit``.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from sam_jax.curvature.lanczos import lanczos, tridiagonal
from sam_jax.curvature.products import hessian_operator

Params = Any
Matvec = Callable[[Params], Params]


class SpectralDensity(NamedTuple):
    """Output of ``spectral_density``.

    Attributes:
      nodes: ``[P, m]`` Gauss quadrature nodes (Ritz values), one row per probe.
      weights: ``[P, m]`` quadrature weights; each row sums to 1.
      grid: ``[G]`` evaluation points spanning the nodes plus five kernel widths either side.
      density: ``[G]`` Gaussian-smoothed density on ``grid``, averaged over probes.
    """

    nodes: jax.Array
    weights: jax.Array
    grid: jax.Array
    density: jax.Array


def stochastic_lanczos_quadrature(
    matvec: Matvec, params: Params, *, num_probes: int, num_iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Gauss quadrature of the spectral measure of ``A`` seen from random probes.

    For a unit probe ``v``, ``m`` Lanczos steps give ``T = S diag(theta) S^T`` and
    ``v^T f(A) v ~= sum_i S[0, i]^2 f(theta_i)``, exact for polynomials of degree up to
    ``2m - 1`` (Golub & Meurant 2009). Averaged over Rademacher probes this estimates
    ``tr f(A) / n``, i.e. the normalised spectral density ``(1/n) sum_i delta(t - lambda_i)``.

    Args:
      matvec: symmetric linear map on params-shaped pytrees.
      params: pytree fixing the structure, shapes and dtype of the probes.
      num_probes: number of probes ``P``.
      num_iters: Lanczos steps ``m`` per probe (capped at the number of parameters).
      key: PRNG key of the probes.

    Returns:
      ``(nodes, weights)``, both ``[P, m]``.
    """
    flat, unravel = ravel_pytree(params)
    num_iters = min(num_iters, flat.size)
    probes = jax.random.rademacher(key, (num_probes, flat.size), flat.dtype)

    def quadrature(probe: jax.Array) -> tuple[jax.Array, jax.Array]:
        nodes, coordinates = jnp.linalg.eigh(tridiagonal(lanczos(matvec, unravel(probe), num_iters)))
        return nodes, coordinates[0] ** 2

    return jax.lax.map(quadrature, probes)


def smoothed_density(nodes: jax.Array, weights: jax.Array, grid: jax.Array, sigma: jax.Array) -> jax.Array:
    """Probe-averaged sum of Gaussians of width ``sigma`` at ``nodes`` with ``weights``, on ``grid``.

    Args:
      nodes: ``[P, m]`` quadrature nodes.
      weights: ``[P, m]`` quadrature weights, rows summing to 1.
      grid: ``[G]`` evaluation points.
      sigma: kernel standard deviation (Ghorbani et al. 2019, eq. 8).

    Returns:
      ``[G]`` density values; it integrates to 1 over the real line.
    """
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2 * jnp.pi))
    return jnp.sum(kernel * weights[None], axis=(1, 2)) / nodes.shape[0]


def spectral_density(
    loss_fn: Callable[[Params, Any], jax.Array],
    params: Params,
    batch: Any,
    *,
    num_probes: int = 1,
    num_iters: int = 80,
    grid_size: int = 1000,
    sigma_fraction: float = 0.01,
    key: jax.Array | None = None,
) -> SpectralDensity:
    """Hessian eigenvalue density of ``loss_fn(params, batch)`` by stochastic Lanczos quadrature.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: parameter pytree.
      batch: pytree of arrays passed to ``loss_fn``.
      num_probes: number of Rademacher probes (Ghorbani et al. find one enough for large models).
      num_iters: Lanczos steps per probe.
      grid_size: number of grid points of the smoothed density.
      sigma_fraction: kernel width as a fraction of the range of the nodes.
      key: PRNG key of the probes (``PRNGKey(0)`` when ``None``).

    Returns:
      A ``SpectralDensity`` with the quadrature per probe and the smoothed density.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    matvec = hessian_operator(lambda p: loss_fn(p, batch), params)
    nodes, weights = stochastic_lanczos_quadrature(matvec, params, num_probes=num_probes, num_iters=num_iters, key=key)
    low, high = jnp.min(nodes), jnp.max(nodes)
    sigma = sigma_fraction * jnp.maximum(high - low, jnp.finfo(nodes.dtype).tiny)
    grid = jnp.linspace(low - 5 * sigma, high + 5 * sigma, grid_size)
    return SpectralDensity(nodes, weights, grid, smoothed_density(nodes, weights, grid, sigma))
