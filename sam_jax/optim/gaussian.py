"""Draws from a diagonal Gaussian posterior ``N(w, 1 / (N p))`` over a parameter pytree.

bSAM (Möllenhoff & Khan 2022, arXiv:2210.01620, Algorithm 1, line 3) and VOGN (Osawa et al. 2019,
arXiv:1906.02506, Algorithm 1) both keep a per-weight precision ``p`` divided by the number of
training examples ``N`` and perturb the mean ``w`` by ``z / sqrt(N p)`` with ``z ~ N(0, I)``. Both
start from the same state (a key, zero momentum, ``p = init_precision``), average the precision the
same way (bSAM's line 8, VOGN's line 10) and step along ``momentum / p``; their hyper-parameters
share the rules of :data:`POSTERIOR_RULES`.
"""

from typing import Any

import jax
import optax

from sam_jax.models.registry import NON_NEGATIVE, POSITIVE, POSITIVE_INTEGER, UNIT_INTERVAL

# The hyper-parameters bSAM and VOGN share, and what each must be.
POSTERIOR_RULES = {
    "num_data": POSITIVE_INTEGER,
    "beta1": UNIT_INTERVAL,
    "beta2": UNIT_INTERVAL,
    "prior_precision": NON_NEGATIVE,
    "damping": NON_NEGATIVE,
    "init_precision": POSITIVE,
}


def initial_posterior(params: optax.Params, seed: int, init_precision: float) -> dict[str, Any]:
    """The fields ``key``, ``momentum`` (zeros) and ``precision`` (``init_precision``) of a first state."""
    return {
        "key": jax.random.PRNGKey(seed),
        "momentum": optax.tree.zeros_like(params),
        "precision": optax.tree.full_like(params, init_precision),
    }


def average_precision(
    precision: optax.Updates, curvature: optax.Updates, *, beta2: float, delta: float, damping: float
) -> optax.Updates:
    """``p <- beta2 p + (1 - beta2) (h + delta + gamma)`` for the curvature estimate ``h``.

    bSAM's line 8 with ``h = sqrt(s) |g|``; VOGN's line 10 with ``h`` the mean squared per-example
    gradient (kept as ``p = s + delta + gamma``, see ``sam_jax.optim.vogn``).
    """
    return jax.tree.map(lambda p, h: beta2 * p + (1 - beta2) * (h + delta + damping), precision, curvature)


def standard_normal_like(key: jax.Array, params: optax.Params) -> optax.Params:
    """A pytree like ``params`` of independent standard-normal draws (one key per leaf)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noise)


def perturb_by_posterior_noise(
    params: optax.Params, precision: optax.Updates, noise: optax.Params, num_data: int
) -> optax.Params:
    """``w + z / sqrt(N p)``: a sample of ``N(w, 1 / (N p))`` from standard-normal ``z``.

    ``noise`` may carry leading axes that ``params`` and ``precision`` lack (one draw per
    sub-batch); they broadcast.
    """
    return jax.tree.map(lambda w, p, z: w + z * jax.lax.rsqrt(num_data * p), params, precision, noise)
