"""BulkSGD against a dense float64 reference: SGD on the gradient minus its top-k Hessian part.

Song, Ahn & Yun (2025), "Does SGD really happen in tiny subspaces?", arXiv:2405.16002.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax import curvature
from sam_jax.losses import cross_entropy
from sam_jax.models import MLP
from sam_jax.optim import bulk_sgd, project_out_top_hessian_directions

LEARNING_RATE, K = 0.1, 3


pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture(scope="module")
def problem(float64):
    key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(key_x, (16, 5), jnp.float64)
    y = jax.random.randint(key_y, (16,), 0, 3)
    model = MLP(num_classes=3, widths=(8,), dtype=jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(key_p, x)["params"])

    def loss(p):
        return cross_entropy(model.apply({"params": p}, x), y)

    return params, loss


def _dense_projection(params, loss, max_norm=None):
    """g - U U^T g with U the top-K eigenvectors of the dense Hessian (numpy eigh); g clipped to max_norm."""
    flat, unravel = ravel_pytree(params)
    grad = np.asarray(jax.grad(lambda t: loss(unravel(t)))(flat))
    if max_norm is not None:
        grad = grad * min(1.0, max_norm / np.linalg.norm(grad))
    _, vectors = np.linalg.eigh(np.asarray(jax.hessian(lambda t: loss(unravel(t)))(flat)))
    top = vectors[:, -K:]
    return grad - top @ (top.T @ grad), top


def _relative(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


def test_update_removes_top_eigendirections(problem):
    params, loss = problem
    opt = bulk_sgd(LEARNING_RATE, K, num_iters=30)
    update = jax.jit(chex.assert_max_traces(lambda g, s, p: opt.update(g, s, p, grad_fn=jax.grad(loss)), n=1))
    state = opt.init(params)
    updates, state = update(jax.grad(loss)(params), state, params)
    projected, top = _dense_projection(params, loss)
    flat_updates = np.asarray(ravel_pytree(updates)[0])
    assert _relative(flat_updates, -LEARNING_RATE * projected) < 1e-6
    assert np.abs(top.T @ flat_updates).max() < 1e-6 * np.linalg.norm(flat_updates)
    # The Ritz vectors actually removed (same key as the first step) are orthogonal to rounding.
    _, lanczos_key = jax.random.split(jax.random.PRNGKey(0))
    _, removed = curvature.eigenvalues(
        curvature.hessian_operator(loss, params), params, k=K, num_iters=30, key=lanczos_key
    )
    removed = np.asarray(jax.vmap(lambda u: ravel_pytree(u)[0])(removed))
    assert np.abs(removed @ flat_updates).max() < 1e-12 * np.linalg.norm(flat_updates)
    stepped = jax.tree.map(jnp.add, params, updates)
    update(jax.grad(loss)(stepped), state, stepped)  # a second step must not retrace


def test_hvp_fn_and_grad_fn_agree_and_momentum_accumulates(problem):
    params, loss = problem
    opt = bulk_sgd(LEARNING_RATE, K, num_iters=30, momentum=0.9)
    grads = jax.grad(loss)(params)

    def hvp_fn(p, v):
        return jax.jvp(jax.grad(loss), (p,), (v,))[1]

    update_with_hvp_fn = jax.jit(lambda s: opt.update(grads, s, params, hvp_fn=hvp_fn))
    state = opt.init(params)
    with_grad_fn, _ = jax.jit(lambda s: opt.update(grads, s, params, grad_fn=jax.grad(loss)))(state)
    with_hvp_fn, state = update_with_hvp_fn(state)
    chex.assert_trees_all_close(with_grad_fn, with_hvp_fn, rtol=1e-8, atol=1e-14)
    second, _ = update_with_hvp_fn(state)
    projected, _ = _dense_projection(params, loss)
    assert _relative(ravel_pytree(second)[0], -LEARNING_RATE * 1.9 * projected) < 1e-6


def test_chain_with_clipping_and_schedule_matches_reference(problem):
    params, loss = problem
    max_norm = 0.5 * float(optax.tree.norm(jax.grad(loss)(params)))  # the clip is active
    schedule = optax.linear_schedule(0.1, 0.0, 4)  # 0.1, then 0.075
    tx = optax.chain(
        optax.clip_by_global_norm(max_norm),
        project_out_top_hessian_directions(K, num_iters=30),
        optax.sgd(schedule, momentum=0.9),
    )
    step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p, grad_fn=jax.grad(loss)))
    state, ours, trace, reference = tx.init(params), params, 0.0, ravel_pytree(params)[0]
    for learning_rate in (0.1, 0.075):
        updates, state = step(ours, state)
        ours = optax.apply_updates(ours, updates)
        projected, _ = _dense_projection(ravel_pytree(params)[1](reference), loss, max_norm)
        trace = projected + 0.9 * trace
        reference = reference - learning_rate * trace
    start = ravel_pytree(params)[0]
    assert _relative(ravel_pytree(ours)[0] - start, reference - start) < 1e-6


def test_bad_arguments():
    with pytest.raises(ValueError, match="k=0"):
        bulk_sgd(0.1, 0)
    with pytest.raises(ValueError, match="num_iters"):
        bulk_sgd(0.1, 5, num_iters=3)
    with pytest.raises(ValueError, match="momentum"):
        bulk_sgd(0.1, 1, momentum=1.0)
    opt = bulk_sgd(0.1, 1)
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="grad_fn"):
        opt.update(params, opt.init(params), params)
