"""The tiny reference problem of the optimizer tests: tanh regression with two parameter leaves.

``loss(params, x, y) = 0.5 mean_i ||tanh(x_i w + b) - y_i||^2`` with a hand-written NumPy gradient,
so that optimizer steps can be checked against a float64 reference that does not use JAX.
"""
import jax.numpy as jnp
import numpy as np


def make_problem(seed: int = 0, batch_size: int = 8) -> tuple[dict, np.ndarray, np.ndarray]:
    """Params ``{"w": [3, 2], "b": [2]}``, inputs ``[batch_size, 3]``, targets ``[batch_size, 2]``."""
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    return params, rng.normal(size=(batch_size, 3)), rng.normal(size=(batch_size, 2))


def loss(params, x, y):
    return 0.5 * jnp.mean(jnp.sum((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2, axis=-1))


def numpy_grad(params: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """Hand-written gradient of ``loss``: d/dz of 0.5 mean ||tanh(z) - y||^2 is (tanh - y)(1 - tanh^2) / B."""
    out = np.tanh(x @ params["w"] + params["b"])
    dz = (out - y) * (1.0 - out**2) / x.shape[0]
    return {"w": x.T @ dz, "b": dz.sum(axis=0)}
