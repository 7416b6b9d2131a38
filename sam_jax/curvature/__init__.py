"""Loss curvature: Hessian and Gauss-Newton products, Lanczos spectra, sharpness, trace, density.

All functions act on parameter pytrees of any Flax model; models with BatchNorm are evaluated in
inference mode through an ``apply_fn(params, x)`` that closes over the running statistics.
"""

from sam_jax.curvature.density import (
    SpectralDensity,
    smoothed_density,
    spectral_density,
    stochastic_lanczos_quadrature,
)
from sam_jax.curvature.lanczos import LanczosResult, RitzPairs, eigenvalues, lanczos, ritz_pairs, tridiagonal
from sam_jax.curvature.products import gauss_newton_operator, gnvp, hessian_operator, hvp
from sam_jax.curvature.sharpness import batch_sharpness, gauss_newton_sharpness, hessian_sharpness
from sam_jax.curvature.trace import hessian_trace, hutchinson_trace

__all__ = [
    "LanczosResult",
    "RitzPairs",
    "SpectralDensity",
    "batch_sharpness",
    "eigenvalues",
    "gauss_newton_operator",
    "gauss_newton_sharpness",
    "gnvp",
    "hessian_operator",
    "hessian_sharpness",
    "hessian_trace",
    "hutchinson_trace",
    "hvp",
    "lanczos",
    "ritz_pairs",
    "smoothed_density",
    "spectral_density",
    "stochastic_lanczos_quadrature",
    "tridiagonal",
]
