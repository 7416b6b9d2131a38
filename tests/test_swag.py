"""SWAG (``sam_jax.optim.swag``) against float64 NumPy references: the moments and the deviation matrix
collected along an SGD trajectory (Maddox et al. 2019, arXiv:1902.02476, Algorithm 1), and the
covariance of its samples, ``(Sigma_diag + D D^T / (K - 1)) / 2`` (Sec. 4)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import optim
from tests.tanh_regression import loss, make_problem, numpy_grad

pytestmark = pytest.mark.usefixtures("float64")

LEARNING_RATE, MOMENTUM = 0.3, 0.5


def _unflatten(flat):
    """``[..., 9]`` -> ``{"w": [..., 2, 3], "b": [..., 3]}``."""
    return {"w": jnp.asarray(flat[..., :6].reshape(*flat.shape[:-1], 2, 3)), "b": jnp.asarray(flat[..., 6:])}


def numpy_swag(params, x, y, num_steps, start_step, collect_every, rank):
    """Heavy-ball SGD by hand; the snapshots after steps t > start_step with (t - start_step) % c == 0;
    their moments; and the deviation of each snapshot from the mean of the snapshots up to it."""
    w = {k: v.copy() for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    snapshots, deviations = [], []
    for t in range(1, num_steps + 1):
        g = numpy_grad(w, x, y)
        velocity = {k: MOMENTUM * velocity[k] + g[k] for k in w}
        w = {k: w[k] - LEARNING_RATE * velocity[k] for k in w}
        if t > start_step and (t - start_step) % collect_every == 0:
            snapshots.append({k: v.copy() for k, v in w.items()})
            deviations.append({k: w[k] - np.mean([s[k] for s in snapshots], axis=0) for k in w})
    mean = {k: np.mean([s[k] for s in snapshots], axis=0) for k in w}
    sq_mean = {k: np.mean([s[k] ** 2 for s in snapshots], axis=0) for k in w}
    ring = {k: np.zeros((rank, *v.shape)) for k, v in w.items()}
    for i, deviation in enumerate(deviations):  # slot i mod rank: the last `rank` deviations
        for k in w:
            ring[k][i % rank] = deviation[k]
    return w, len(snapshots), mean, sq_mean, ring


class SwagTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_moments_and_deviations_match_the_reference(self):
        params, x, y = make_problem(4)
        num_steps, start_step, collect_every, rank = 9, 2, 2, 2  # snapshots after steps 4, 6, 8: the ring wraps
        tx = optim.swag(
            optax.sgd(LEARNING_RATE, momentum=MOMENTUM), start_step=start_step, collect_every=collect_every, rank=rank
        )
        grad = jax.grad(loss)

        @self.variant
        def step(params, state):
            updates, state = tx.update(grad(params, x, y), state, params)
            return optax.apply_updates(params, updates), state

        ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for _ in range(num_steps):
            ours, state = step(ours, state)
        w, count, mean, sq_mean, ring = numpy_swag(params, x, y, num_steps, start_step, collect_every, rank)
        self.assertEqual((int(state.count), int(state.num_collected)), (num_steps, count))
        self.assertEqual(count, 3)
        # The updates are SGD's, unchanged; the moments and the ring buffer are Algorithm 1's.
        chex.assert_trees_all_close(
            (ours, state.mean, state.sq_mean, state.deviations), (w, mean, sq_mean, ring), rtol=1e-10, atol=1e-12
        )
        self.assertGreater(np.abs(ring["w"]).max(), 1e-3)

    def test_sample_covariance_is_half_diagonal_plus_low_rank(self):
        rng = np.random.default_rng(0)
        params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}
        size = 9
        for num_collected, rank in ((3, 4), (6, 4)):  # fewer columns than the rank, then a full ring
            columns = min(num_collected, rank)
            mean = rng.normal(size=size)
            variance = rng.uniform(0.05, 0.2, size=size)
            ring = np.zeros((rank, size))
            ring[:columns] = 0.3 * rng.normal(size=(columns, size))
            state = optim.swag(optax.sgd(0.1), start_step=0, rank=rank).init(params)
            state = state._replace(
                num_collected=jnp.asarray(num_collected, jnp.int32),
                mean=_unflatten(mean),
                sq_mean=_unflatten(variance + mean**2),
                deviations=_unflatten(ring),
            )
            keys = jax.random.split(jax.random.PRNGKey(num_collected), 200_000)
            samples = jax.jit(jax.vmap(lambda k: optim.swag_sample(params, state, k, 100)))(keys)
            flat = np.concatenate([np.asarray(samples["w"]).reshape(-1, 6), np.asarray(samples["b"])], axis=1)
            expected = 0.5 * (np.diag(variance) + ring[:columns].T @ ring[:columns] / (columns - 1))
            # 200k draws: the empirical covariance is within about 1 % of the expected one.
            np.testing.assert_allclose(np.mean(flat, axis=0), mean, atol=0.01)
            error = np.linalg.norm(np.cov(flat, rowvar=False) - expected) / np.linalg.norm(expected)
            self.assertLess(error, 0.02, (num_collected, rank))

    def test_before_any_snapshot_the_sample_is_the_parameters(self):
        params = {"w": jnp.arange(4.0)}
        tx = optim.swag(optax.sgd(0.1), start_step=5)
        state = tx.init(params)
        updates, state = tx.update({"w": jnp.ones(4)}, state, params)
        self.assertEqual(int(state.num_collected), 0)
        chex.assert_trees_all_equal(optim.swag_sample(params, state, jax.random.PRNGKey(0), 10), params)
        chex.assert_trees_all_close(updates, {"w": -0.1 * jnp.ones(4)})

    def test_invalid_arguments_raise(self):
        for bad in (dict(start_step=-1), dict(collect_every=0), dict(rank=0), dict(rank=2.5)):
            with self.assertRaisesRegex(ValueError, "Bad SWAG arguments"):
                optim.swag(optax.sgd(0.1), **(dict(start_step=0) | bad))
        params = {"w": jnp.ones(2)}
        tx = optim.swag(optax.sgd(0.1), start_step=0)
        with self.assertRaisesRegex(ValueError, "collects the parameters"):
            tx.update(params, tx.init(params))
        with self.assertRaisesRegex(ValueError, "exactly one SWAGState"):
            optim.swag_sample(params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0), 10)
