"""SWAG (``sam_jax.optim.swag``) against float64 NumPy references: the moments and the deviation matrix
collected along an SGD trajectory (Maddox et al. 2019, arXiv:1902.02476, Algorithm 1), and the
covariance of its samples, ``(Sigma_diag + D D^T / (K - 1)) / 2`` (Sec. 4)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import data, optim
from sam_jax.models import MODELS
from sam_jax.training import RunData, build_run, default_config, make_predictive, model_forward
from sam_jax.training.predictive import recompute_batch_stats
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


class _DenseBatchNorm(nn.Module):
    """Dense(4) -> BatchNorm -> ReLU -> Dense(K), in float64: the smallest model with running statistics."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = nn.Dense(4, dtype=jnp.float64, param_dtype=jnp.float64)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=jnp.float64, param_dtype=jnp.float64)(h)
        return nn.Dense(self.num_classes, dtype=jnp.float64, param_dtype=jnp.float64)(nn.relu(h))


def _numpy_batch_stats(params, images, batch_size):
    """The mean over full batches of BatchNorm's batch mean and (biased) variance of ``x W + b``."""
    dense = params["Dense_0"]
    h = images @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    batches = [h[i : i + batch_size] for i in range(0, len(h) - batch_size + 1, batch_size)]
    return {
        "BatchNorm_0": {
            "mean": np.mean([b.mean(0) for b in batches], axis=0),
            "var": np.mean([b.var(0) for b in batches], axis=0),
        }
    }


def test_recomputed_batch_stats_are_the_average_of_the_batch_statistics():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(40, 3)) * 2.0 + 1.0
    model = _DenseBatchNorm(3)
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(images[:2]))
    trained_stats = jax.tree.map(lambda x: x + 5.0, {"batch_stats": variables["batch_stats"]})  # must not leak in

    def update(params, model_state, batch):
        return model_forward(model, params, model_state, batch, train=True)[1]

    batches = [jnp.asarray(images[i : i + 10]) for i in range(0, 40, 10)]
    got = recompute_batch_stats(update, variables["params"], trained_stats, batches)
    # Flax applies BatchNorm's decay 0.9 rounded to float32 to the old value and 1 - 0.9 in float64 to
    # the batch's: the measured decay is then off by 2e-8, and the average by about 2e-7 relative.
    chex.assert_trees_all_close(
        got["batch_stats"], _numpy_batch_stats(variables["params"], images, 10), rtol=1e-6, atol=1e-12
    )


def test_swag_predictive_recomputes_batch_statistics_for_every_sample(monkeypatch):
    # The whole path: a SWAG run of a BatchNorm model in the loop, then make_predictive, against
    # samples drawn with the predictive's keys and NumPy statistics of each sample on the training set.
    monkeypatch.setitem(MODELS, "dense_batchnorm", _DenseBatchNorm)
    rng = np.random.default_rng(2)

    def dataset(n):
        images = rng.normal(size=(n, 5))
        return data.ArrayDataset(images, np.argmax(images[:, :3], axis=1).astype(np.int32), 3)

    run_data = RunData(dataset(48), dataset(0), dataset(20), 3, None)
    config = default_config()
    config.data.name, config.data.val_size = "digits", 0  # validated only; the data are passed in
    config.model.name = "dense_batchnorm"
    config.optimizer.name = "swag"
    config.optimizer.learning_rate = 0.1
    config.optimizer.swag.update({"start_step": 2, "collect_every": 1, "rank": 3})
    config.batch_size, config.num_steps, config.progress_bar = 16, 6, False
    run = build_run(config, run_data)
    state = run.init_state
    for epoch in (0, 1):  # 3 batches per epoch
        for batch in data.train_batches(run_data.train, 16, seed=0, epoch=epoch):
            state, _ = run.train_step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    assert int(state.opt_state.num_collected) == 4

    probs = make_predictive([(run, state)], posterior_samples=3, seed=7)(run_data.test)
    expected = []
    for j in range(3):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(7), 0), j)
        params = optim.swag_sample(state.params, state.opt_state, key, 48)
        stats = {"batch_stats": _numpy_batch_stats(params, run_data.train.images, 16)}
        logits = run.model.apply({"params": params, **stats}, jnp.asarray(run_data.test.images), train=False)
        expected.append(jax.nn.softmax(logits))
    np.testing.assert_allclose(probs, np.mean(expected, axis=0), rtol=1e-5, atol=1e-8)  # see the test above
    # The trained statistics would give another predictive.
    trained = jax.nn.softmax(
        run.model.apply({"params": params, **state.model_state}, jnp.asarray(run_data.test.images), train=False)
    )
    assert np.abs(np.asarray(trained) - expected[-1]).max() > 1e-3
