"""Escape from a known strict saddle: how many steps an optimizer needs to leave it.

Tan et al. (2024, arXiv:2401.07250, abstract) state that SAM, compared with SGD, "is more prone to
getting stuck at the saddle points"; Kim et al. (2023, arXiv:2301.06308, Sec. 3) show that a saddle
can become an attractor of SAM's dynamics. Near a saddle ``w*`` of a quadratic with Hessian ``H``,
SAM's descent gradient is ``H (w - w*) + rho H g / ||g||`` with ``g = H (w - w*)``: along a direction
of negative curvature ``-lambda`` its component is ``-lambda y (1 - rho lambda / ||g||)``, which
points back to the saddle once ``||g|| < rho lambda``. SSAM (Tan et al. 2024, Algorithm 1) rescales
that gradient to ``||g||`` without changing its direction.

Two problems whose saddle is at ``params = 0``:

- :func:`quartic_saddle`: ``f(x, y) = x^2 / 2 - y^2 / 2 + y^4 / 4``, Hessian ``diag(1, -1)`` at 0,
  minima ``(0, +-1)`` with ``f = -1/4``;
- :func:`linear_network`: ``L(W1, W2) = ||W2 W1 - A||_F^2 / 2``, a two-layer linear network on
  whitened inputs (Saxe et al. 2013, arXiv:1312.6120); at 0 the Hessian's eigenvalues are
  ``+-sigma_i(A)`` (a strict saddle), the global minima are ``W2 W1 = A`` with loss 0.

:func:`simulate` runs any optax transformation from a point near the saddle, with optional Gaussian
gradient noise (SGD's noise, one sample per step shared by every gradient of that step, as one
mini-batch is), and :func:`escape_step` finds the first step whose loss is below a threshold.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = jax.Array | dict


class SaddleProblem(NamedTuple):
    """A loss with a strict saddle at ``params = 0``.

    Attributes:
      name: what reports call it.
      loss: ``loss(params) -> scalar``.
      init: ``init(key, scale) -> params``: ``scale`` times standard normal entries (a point near the saddle).
      saddle_loss: the loss at the saddle.
      minimum_loss: the loss at the global minima.
      coordinates: ``coordinates(params) -> [2]``: the two numbers the trajectory figure draws.
      coordinate_names: their axis labels.
    """

    name: str
    loss: Callable[[Params], jax.Array]
    init: Callable[[jax.Array, float], Params]
    saddle_loss: float
    minimum_loss: float
    coordinates: Callable[[Params], jax.Array]
    coordinate_names: tuple[str, str]


class Trajectory(NamedTuple):
    """What :func:`simulate` records (leading batch axes when vmapped).

    Attributes:
      losses: ``[T + 1]`` noise-free loss at the initial point and after each step.
      coordinates: ``[T + 1, 2]`` the problem's ``coordinates`` along the way.
      distances: ``[T + 1]`` distance ``||params||`` from the saddle at 0.
    """

    losses: jax.Array
    coordinates: jax.Array
    distances: jax.Array


def quartic_saddle() -> SaddleProblem:
    """``f(x, y) = x^2 / 2 - y^2 / 2 + y^4 / 4`` on ``params = [x, y]``: saddle 0, minima ``(0, +-1)``, ``f = -1/4``."""

    def loss(w: jax.Array) -> jax.Array:
        return 0.5 * w[0] ** 2 - 0.5 * w[1] ** 2 + 0.25 * w[1] ** 4

    return SaddleProblem(
        name="quartic_saddle",
        loss=loss,
        init=lambda key, scale: scale * jax.random.normal(key, (2,)),
        saddle_loss=0.0,
        minimum_loss=-0.25,
        coordinates=lambda w: w,
        coordinate_names=("x", "y"),
    )


def linear_network(singular_values: tuple[float, ...], hidden: int) -> SaddleProblem:
    """``||W2 W1 - A||_F^2 / 2`` with ``A = diag(singular_values)`` and ``hidden`` units.

    Each mode ``i`` of ``A`` is learnt when ``(W2 W1)_ii`` reaches ``sigma_i``; the figure draws the
    two largest modes. ``hidden >= len(singular_values)`` so that the minimum loss is 0.

    Raises:
      ValueError: fewer than two singular values, or ``hidden`` too small to fit ``A``.
    """
    target = np.diag(np.asarray(singular_values, np.float64))
    size = len(singular_values)
    if size < 2 or hidden < size:
        raise ValueError(
            f"linear_network needs >= 2 singular values and hidden >= their number; got {singular_values}, {hidden}."
        )

    def loss(params: dict) -> jax.Array:
        product = params["w2"] @ params["w1"]
        return 0.5 * jnp.sum((product - target.astype(product.dtype)) ** 2)

    def init(key: jax.Array, scale: float) -> dict:
        first, second = jax.random.split(key)
        return {
            "w1": scale * jax.random.normal(first, (hidden, size)),
            "w2": scale * jax.random.normal(second, (size, hidden)),
        }

    return SaddleProblem(
        name="linear_network",
        loss=loss,
        init=init,
        saddle_loss=float(0.5 * np.sum(target**2)),
        minimum_loss=0.0,
        coordinates=lambda p: jnp.diagonal(p["w2"] @ p["w1"])[:2],
        coordinate_names=(f"(W2 W1)_11 (target {singular_values[0]:g})", f"(W2 W1)_22 (target {singular_values[1]:g})"),
    )


def escape_threshold(problem: SaddleProblem, fraction: float = 0.5) -> float:
    """The loss ``fraction`` of the way down from the saddle to the minimum."""
    return problem.saddle_loss - fraction * (problem.saddle_loss - problem.minimum_loss)


def escape_step(losses: jax.Array, threshold: float) -> jax.Array:
    """The first index ``t`` along the last axis with ``losses[..., t] < threshold``; -1 where there is none.

    Index 0 is the initial point, so the value is the number of steps taken to get below ``threshold``.
    """
    below = losses < threshold
    return jnp.where(jnp.any(below, axis=-1), jnp.argmax(below, axis=-1), -1)


def gradient_noise(key: jax.Array, step: jax.Array, params: Params, std: jax.Array) -> Params:
    """Noise of step ``step``: ``std`` times standard normals shaped like ``params``, from ``fold_in(key, step)``."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, step), len(leaves))
    noise = [std * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noise)


def simulate(
    problem: SaddleProblem,
    tx: optax.GradientTransformation,
    params: Params,
    num_steps: int,
    noise_std: jax.Array,
    key: jax.Array,
) -> Trajectory:
    """Runs ``num_steps`` steps of ``tx`` on ``problem.loss`` from ``params`` (jit- and vmap-safe).

    The gradient oracle at step ``t`` is ``grad loss(p) + xi_t`` with ``xi_t = gradient_noise(key, t,
    ...)``; ``tx.update`` gets the oracle's value at ``params`` and the oracle as ``grad_fn`` (a
    transformation without extra arguments ignores it), so SAM's ascent and descent gradients share
    one noise sample. ``noise_std = 0`` gives (full-batch) gradient descent and its SAM variants.

    Returns:
      The :class:`Trajectory` (losses without noise).
    """
    tx = optax.with_extra_args_support(tx)
    grad = jax.grad(problem.loss)

    def record(p: Params) -> tuple[jax.Array, jax.Array, jax.Array]:
        distance = jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(p)))
        return problem.loss(p), problem.coordinates(p), distance

    def step(carry, t):
        p, state = carry
        noise = gradient_noise(key, t, p, noise_std)

        def oracle(q: Params) -> Params:
            return jax.tree.map(jnp.add, grad(q), noise)

        updates, state = tx.update(oracle(p), state, p, grad_fn=oracle)
        p = optax.apply_updates(p, updates)
        return (p, state), record(p)

    _, (losses, coordinates, distances) = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(num_steps))
    first = record(params)
    return Trajectory(
        *(jnp.concatenate([start[None], rest]) for start, rest in zip(first, (losses, coordinates, distances)))
    )
