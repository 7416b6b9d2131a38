"""The tiny reference problem of the optimizer tests: tanh regression with two parameter leaves.

``loss(params, x, y) = 0.5 mean_i ||tanh(x_i w + b) - y_i||^2`` with a hand-written NumPy gradient,
so that optimizer steps can be checked against a float64 reference that does not use JAX.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


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


def run_steps(
    tx: optax.GradientTransformationExtraArgs,
    params: dict,
    grads_fn: Callable[[Any], Any],
    grad_fn: Callable[[Any], Any],
    num_steps: int,
    step_fn: Callable = jax.jit,
) -> list[dict]:
    """Applies ``num_steps`` updates of ``tx`` from ``params``; returns the parameters after each.

    Each update is ``tx.update(grads_fn(params), state, params, grad_fn=grad_fn)``; ``step_fn`` wraps
    the step (``jax.jit`` or a chex variant).
    """

    def step(params, state):
        updates, state = tx.update(grads_fn(params), state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), state

    step = step_fn(step)
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    history = []
    for _ in range(num_steps):
        params, state = step(params, state)
        history.append(params)
    return history
