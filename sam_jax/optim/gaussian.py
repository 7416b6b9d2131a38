"""Draws from a diagonal Gaussian posterior ``N(w, 1 / (N p))`` over a parameter pytree.

bSAM (Möllenhoff & Khan 2023, arXiv:2210.01620, Algorithm 1, line 3) and VOGN (Osawa et al. 2019,
arXiv:1906.02506, Algorithm 1) both keep a per-weight precision ``p`` divided by the number of
training examples ``N`` and perturb the mean ``w`` by ``z / sqrt(N p)`` with ``z ~ N(0, I)``.
"""

import jax
import optax


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
