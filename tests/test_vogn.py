"""VOGN (``sam_jax.optim.vogn``) against a NumPy float64 transcription of Algorithm 1 of Osawa et al. (2019),
"Practical Deep Learning with Bayesian Principles", arXiv:1906.02506, with per-example gradients and one
weight sample per sub-batch (Möllenhoff & Khan 2022, App. H)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from sam_jax.training.steps import example_gradient_moments
from tests.tanh_regression import loss, make_problem, numpy_grad

NUM_DATA = 40
NUM_STEPS = 4
BATCH_SIZE = 8
HYPER = dict(beta1=0.7, beta2=0.9, prior_precision=4.0, damping=0.05, init_precision=2.0)

pytestmark = pytest.mark.usefixtures("float64")


def numpy_vogn(params, x, y, noises, learning_rates, beta1, beta2, prior_precision, damping, init_precision):
    """Algorithm 1 of Osawa et al. with tau = rho = 1, written with the Gauss-Newton average ``s``
    (lines 5, 9-11 add ``delta + gamma`` to it) and the given standard-normal draws, one per sub-batch."""
    delta = prior_precision / NUM_DATA
    batch_size = x.shape[0]
    mu = {k: v.copy() for k, v in params.items()}
    s = {k: np.full_like(v, init_precision - delta - damping) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    for step_noises, alpha in zip(noises, learning_rates):
        per_sample = batch_size // len(step_noises)
        g_hat = {k: np.zeros_like(v) for k, v in mu.items()}
        h_hat = {k: np.zeros_like(v) for k, v in mu.items()}
        for i in range(batch_size):
            z = step_noises[i // per_sample]
            theta = {k: mu[k] + z[k] / np.sqrt(NUM_DATA * (s[k] + delta + damping)) for k in mu}
            g = numpy_grad(theta, x[i : i + 1], y[i : i + 1])  # the gradient of example i's loss
            for k in mu:
                g_hat[k] += g[k] / batch_size
                h_hat[k] += g[k] ** 2 / batch_size
        m = {k: beta1 * m[k] + g_hat[k] + delta * mu[k] for k in mu}
        s = {k: beta2 * s[k] + (1 - beta2) * h_hat[k] for k in mu}
        mu = {k: mu[k] - alpha * m[k] / (s[k] + delta + damping) for k in mu}
    return mu, {k: s[k] + delta + damping for k in mu}, m


def _per_example_grad_fn(x, y, num_samples):
    """``grad_fn`` of VOGN's contract: one weight sample per sub-batch; per sub-batch the mean of the
    per-example gradients and of their squares, stacked ``[S, ...]``."""
    example_grads = jax.vmap(jax.grad(lambda p, xi, yi: loss(p, xi[None], yi[None])), (None, 0, 0))

    def moments(p, xs, ys):
        g = example_grads(p, xs, ys)
        return jax.tree.map(lambda gi: gi.mean(0), g), jax.tree.map(lambda gi: (gi * gi).mean(0), g)

    split = lambda a: jnp.asarray(a).reshape((num_samples, BATCH_SIZE // num_samples) + a.shape[1:])
    return lambda stacked: jax.vmap(moments)(stacked, split(x), split(y))


def _noises(params, num_samples, seed=1):
    rng = np.random.default_rng(seed)
    return [
        [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(num_samples)] for _ in range(NUM_STEPS)
    ]


def _stack(step_noises):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *step_noises)


class VognTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("one_sample_constant", 1, "constant"), ("two_samples_cosine", 2, "cosine"), ("per_example", 8, "constant")
    )
    def test_vogn_matches_algorithm_1_with_given_noise(self, num_samples, schedule):
        params, x, y = make_problem(2, BATCH_SIZE)
        noises = _noises(params, num_samples)
        if schedule == "constant":
            learning_rate, learning_rates = 0.05, [0.05] * NUM_STEPS
        else:
            learning_rate = optax.cosine_decay_schedule(0.08, NUM_STEPS)
            learning_rates = [0.04 * (1 + np.cos(np.pi * t / NUM_STEPS)) for t in range(NUM_STEPS)]
        tx = optim.vogn(learning_rate, NUM_DATA, BATCH_SIZE, **HYPER, num_samples=num_samples)
        grad_fn = _per_example_grad_fn(x, y, num_samples)

        @self.variant
        def step(params, state, noise):
            updates, state = tx.update(None, state, params, grad_fn=grad_fn, noise=noise)
            return optax.apply_updates(params, updates), state

        ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for step_noises in noises:
            ours, state = step(ours, state, _stack(step_noises))
        mu, precision, momentum = numpy_vogn(params, x, y, noises, learning_rates, **HYPER)
        vogn_state, _ = state
        self.assertGreater(np.abs(mu["w"] - params["w"]).max(), 1e-2)  # it moved
        chex.assert_trees_all_close(
            (ours, vogn_state.precision, vogn_state.momentum), (mu, precision, momentum), rtol=1e-10, atol=1e-12
        )

    def test_precision_averages_per_example_squares_not_the_square_of_the_mean(self):
        # Two examples whose gradients cancel: the batch gradient is 0, the Gauss-Newton term is not.
        params = {"w": jnp.zeros(3)}
        per_example = jnp.array([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]])
        tx = optim.scale_by_vogn(10, 2, prior_precision=0.0, beta2=0.5, damping=0.0, init_precision=1.0)
        moments = lambda stacked: ({"w": per_example.mean(0)[None]}, {"w": (per_example**2).mean(0)[None]})
        direction, state = tx.update(None, tx.init(params), params, grad_fn=moments)
        np.testing.assert_allclose(state.precision["w"], 0.5 + 0.5 * np.array([1.0, 4.0, 0.25]))
        np.testing.assert_allclose(direction["w"], 0.0)

    def test_examples_of_a_sub_batch_share_one_weight_sample(self):
        params, _, _ = make_problem(3)
        seen = []

        def grad_fn(stacked):
            seen.append(stacked)
            return jax.tree.map(jnp.zeros_like, stacked), jax.tree.map(jnp.zeros_like, stacked)

        tx = optim.scale_by_vogn(NUM_DATA, BATCH_SIZE, prior_precision=1.0, num_samples=4, seed=5)
        state = tx.init(params)
        tx.update(None, state, jax.tree.map(jnp.asarray, params), grad_fn=grad_fn)
        rows = np.asarray(seen[0]["w"]).reshape(4, -1)  # one weight sample per sub-batch of 2 examples
        self.assertEqual(len({tuple(row.round(12)) for row in rows}), 4)
        # The spread is the posterior's: 1 / sqrt(N p) with p = init_precision.
        self.assertLess(np.abs(rows - params["w"].ravel()).max(), 5 / np.sqrt(NUM_DATA))

    def test_posterior_samples_have_variance_one_over_n_p(self):
        width = 20_000
        params = {"w": jnp.full((2, width), -0.3)}
        tx = optim.vogn(0.1, NUM_DATA, BATCH_SIZE, prior_precision=1.0)
        vogn_state, schedule_state = tx.init(params)
        row_precision = jnp.array([0.5, 3.0])
        vogn_state = vogn_state._replace(precision={"w": jnp.broadcast_to(row_precision[:, None], (2, width))})
        sample = optim.vogn_sample(params, (vogn_state, schedule_state), jax.random.PRNGKey(0), NUM_DATA)
        std = 1.0 / np.sqrt(NUM_DATA * np.asarray(row_precision))
        # 20k draws: the mean is within 0.03 std, the variance within 5 %.
        np.testing.assert_array_less(np.abs(sample["w"].mean(1) + 0.3) / std, 0.03)
        np.testing.assert_allclose(sample["w"].var(1), std**2, rtol=0.05)

    def test_invalid_arguments_raise(self):
        for bad in (
            dict(num_samples=3),  # does not divide the batch of 8
            dict(num_samples=0),
            dict(batch_size=0),
            dict(num_data=0),
            dict(beta1=1.0),
            dict(beta2=-0.1),
            dict(damping=-1.0),
            dict(prior_precision=-1.0),
            dict(init_precision=0.0),
            dict(learning_rate=0.0),
        ):
            kwargs = dict(learning_rate=0.1, num_data=10, batch_size=8, prior_precision=1.0) | bad
            with self.assertRaisesRegex(ValueError, "Bad VOGN hyper-parameters"):
                optim.vogn(**kwargs)
        params = {"w": jnp.ones(2)}
        tx = optim.vogn(0.1, 10, 8, prior_precision=1.0)
        with self.assertRaisesRegex(ValueError, "grad_fn"):
            tx.update(None, tx.init(params), params)
        one_per_example = lambda stacked: (jnp.zeros((8, 2)),) * 2  # per-example gradients, not moments
        with self.assertRaisesRegex(ValueError, "stacked over the 1 weight samples"):
            tx.update(None, tx.init(params), params, grad_fn=one_per_example)
        with self.assertRaisesRegex(ValueError, "exactly one VOGNState"):
            optim.vogn_sample(params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0), 10)


@pytest.mark.parametrize("sequential", [True, False])
def test_train_step_per_example_moments_match_numpy(sequential):
    """The train step's per-example moments (``sequential``: CPU's one-example-at-a-time scan; else
    ``jax.vmap``) are the float64 NumPy mean of the per-example gradients and of their squares."""
    params, x, y = make_problem(4, BATCH_SIZE)
    example_grad = lambda p, example: jax.grad(loss)(p, example["image"], example["label"])
    moments = jax.jit(example_gradient_moments(example_grad, sequential=sequential))
    mean, squares = moments(jax.tree.map(jnp.asarray, params), {"image": jnp.asarray(x), "label": jnp.asarray(y)})
    grads = [numpy_grad(params, x[i : i + 1], y[i : i + 1]) for i in range(BATCH_SIZE)]
    for k in params:
        per_example = np.stack([g[k] for g in grads])
        np.testing.assert_allclose(mean[k], per_example.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(squares[k], (per_example**2).mean(0), rtol=1e-12, atol=1e-14)
        assert np.abs((per_example**2).mean(0) - per_example.mean(0) ** 2).max() > 1e-3  # not the squared mean
