"""Mean-field Gaussian VI (``sam_jax.optim.variational``; Blundell et al. 2015, "Weight Uncertainty in
Neural Networks", arXiv:1505.05424) against float64 NumPy references: the KL term, the ELBO gradient
at fixed noise, whole steps with plain SGD as base, posterior samples, and the registry entry."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import optim
from sam_jax.training import default_config, make_optimizer
from tests.tanh_regression import loss, make_problem, numpy_grad

NUM_DATA = 50
NUM_STEPS = 3
PRIOR_PRECISION = 2.0

pytestmark = pytest.mark.usefixtures("float64")


def _noises(params, num, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(num)]


def _random_rho(params, seed=2):
    # sigma = softplus(rho) between about 0.05 and 0.7: noise that visibly moves the sample.
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-3.0, 0.0, size=v.shape) for k, v in params.items()}


def numpy_softplus(x):
    return np.log1p(np.exp(x))


def numpy_kl(mu, sigma, prior_precision):
    """KL(N(m, s^2) || N(0, v)) = log(sqrt(v) / s) + (s^2 + m^2) / (2 v) - 1/2, summed; v = 1 / lam."""
    v = 1.0 / prior_precision
    return sum(np.sum(np.log(np.sqrt(v) / sigma[k]) + (sigma[k] ** 2 + mu[k] ** 2) / (2 * v) - 0.5) for k in mu)


def numpy_sgd_vi(params, x, y, noises, learning_rate, prior_precision, init_std):
    """Steps of Blundell et al. Sec. 3.2 with the closed-form KL gradient and plain SGD on (mu, rho)."""
    mu = {k: v.copy() for k, v in params.items()}
    rho = {k: np.full_like(v, np.log(np.expm1(init_std))) for k, v in params.items()}
    for z in noises:
        sigma = {k: numpy_softplus(rho[k]) for k in mu}
        g = numpy_grad({k: mu[k] + sigma[k] * z[k] for k in mu}, x, y)
        grad_mu = {k: g[k] + prior_precision * mu[k] / NUM_DATA for k in mu}
        grad_rho = {
            k: (g[k] * z[k] + (prior_precision * sigma[k] - 1.0 / sigma[k]) / NUM_DATA) / (1.0 + np.exp(-rho[k]))
            for k in mu
        }
        mu = {k: mu[k] - learning_rate * grad_mu[k] for k in mu}
        rho = {k: rho[k] - learning_rate * grad_rho[k] for k in mu}
    return mu, rho


def test_kl_matches_closed_form_and_monte_carlo():
    rng = np.random.default_rng(0)
    mu = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    sigma = {k: rng.uniform(0.3, 1.5, size=v.shape) for k, v in mu.items()}
    kl = float(optim.kl_divergence_mean_field(mu, sigma, PRIOR_PRECISION))
    np.testing.assert_allclose(kl, numpy_kl(mu, sigma, PRIOR_PRECISION), rtol=1e-12)

    # E_q[log q(w) - log p(w)] from 200k draws; within 5 standard errors of the estimate.
    num_samples = 200_000
    log_ratio = np.zeros(num_samples)
    for k in mu:
        z = rng.normal(size=(num_samples, *mu[k].shape))
        w = mu[k] + sigma[k] * z
        log_q = -0.5 * z**2 - np.log(sigma[k]) - 0.5 * np.log(2 * np.pi)
        log_p = -0.5 * PRIOR_PRECISION * w**2 + 0.5 * np.log(PRIOR_PRECISION / (2 * np.pi))
        log_ratio += (log_q - log_p).reshape(num_samples, -1).sum(axis=1)
    standard_error = log_ratio.std() / np.sqrt(num_samples)
    assert abs(log_ratio.mean() - kl) < 5 * standard_error, (log_ratio.mean(), kl, standard_error)
    assert kl > 100 * standard_error  # the check is not vacuous


def test_elbo_gradient_equals_grad_of_reparameterised_objective():
    # With an identity base the transformation returns d_mu and adds d_rho to rho.
    params, x, y = make_problem()
    rho = _random_rho(params)
    (noise,) = _noises(params, 1)
    tx = optim.bayes_by_backprop(optax.identity(), NUM_DATA, prior_precision=PRIOR_PRECISION, init_std=0.1)
    state = tx.init(params)._replace(rho=jax.tree.map(jnp.asarray, rho))
    grad_mu, new_state = jax.jit(
        lambda p, s: tx.update(None, s, p, grad_fn=jax.grad(lambda w: loss(w, x, y)), noise=noise)
    )(params, state)
    grad_rho = jax.tree.map(jnp.subtract, new_state.rho, rho)

    def negative_elbo(mu, rho):
        sigma = jax.tree.map(jax.nn.softplus, rho)
        sample = jax.tree.map(lambda m, s, z: m + s * z, mu, sigma, noise)
        return loss(sample, x, y) + optim.kl_divergence_mean_field(mu, sigma, PRIOR_PRECISION) / NUM_DATA

    expected_mu, expected_rho = jax.grad(negative_elbo, argnums=(0, 1))(params, rho)
    chex.assert_trees_all_close((grad_mu, grad_rho), (expected_mu, expected_rho), rtol=1e-10, atol=1e-13)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_rho)) > 1e-3  # rho is learned


class MeanFieldVITest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_steps_match_numpy_reference_with_sgd(self):
        params, x, y = make_problem(1)
        noises = _noises(params, NUM_STEPS, seed=3)
        learning_rate, init_std = 0.5, 0.3
        tx = optim.bayes_by_backprop(
            optax.sgd(learning_rate), NUM_DATA, prior_precision=PRIOR_PRECISION, init_std=init_std, seed=5
        )
        grad_fn = jax.grad(lambda p: loss(p, x, y))

        @self.variant
        def step(params, state, noise):
            updates, state = tx.update(None, state, params, grad_fn=grad_fn, noise=noise)
            return optax.apply_updates(params, updates), state

        mu, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for noise in noises:
            mu, state = step(mu, state, noise)
        expected_mu, expected_rho = numpy_sgd_vi(params, x, y, noises, learning_rate, PRIOR_PRECISION, init_std)
        chex.assert_trees_all_close((mu, state.rho), (expected_mu, expected_rho), rtol=1e-10, atol=1e-12)
        zeros = [{k: np.zeros_like(v) for k, v in n.items()} for n in noises]
        without_noise, _ = numpy_sgd_vi(params, x, y, zeros, learning_rate, PRIOR_PRECISION, init_std)
        self.assertGreater(np.abs(expected_mu["w"] - without_noise["w"]).max(), 1e-3)  # the noise matters

    def test_own_noise_is_reproducible_traces_once_and_advances_the_key(self):
        params, x, y = make_problem(2)
        tx = optim.mean_field_vi(0.1, NUM_DATA, init_std=0.1, seed=3)
        chex.clear_trace_counter()

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(params, state):
            return tx.update(None, state, params, grad_fn=jax.grad(lambda p: loss(p, x, y)))

        state = tx.init(params)
        first, next_state = step(params, state)
        again, _ = step(params, state)
        second, _ = step(params, next_state)
        chex.assert_trees_all_equal(first, again)
        self.assertFalse(np.array_equal(state.key, next_state.key))
        self.assertFalse(np.allclose(first["w"], second["w"]))
        chex.assert_tree_all_finite((second, next_state))

    def test_mean_field_vi_is_bayes_by_backprop_around_adam(self):
        params, x, y = make_problem(4)
        (noise,) = _noises(params, 1, seed=6)
        grad_fn = jax.grad(lambda p: loss(p, x, y))
        hyper = dict(prior_precision=3.0, init_std=0.2, seed=7)
        ours = optim.mean_field_vi(0.05, NUM_DATA, b1=0.8, b2=0.99, **hyper)
        by_hand = optim.bayes_by_backprop(optax.adam(0.05, b1=0.8, b2=0.99), NUM_DATA, **hyper)
        results = [tx.update(None, tx.init(params), params, grad_fn=grad_fn, noise=noise) for tx in (ours, by_hand)]
        chex.assert_trees_all_close(*results, rtol=1e-12)

    def test_samples_have_the_learned_std(self):
        # Wide leaves whose rows share a sigma: each row holds 20k draws of N(mu, sigma^2).
        width = 20_000
        params = {"w": jnp.full((3, width), 0.5), "b": jnp.zeros((3, width))}
        row_std = {"w": np.array([0.01, 0.1, 1.0]), "b": np.array([0.05, 0.5, 2.0])}
        tx = optax.chain(optim.mean_field_vi(0.1, NUM_DATA), optax.identity())
        vi_state, identity_state = tx.init(params)
        rho = {k: np.broadcast_to(np.log(np.expm1(s))[:, None], params[k].shape) for k, s in row_std.items()}
        vi_state = vi_state._replace(rho=jax.tree.map(jnp.asarray, rho))
        key = jax.random.PRNGKey(0)
        sample = optim.mean_field_vi_sample(params, (vi_state, identity_state), key, NUM_DATA)
        # The chain's state and the MeanFieldVIState inside it give the same draw.
        chex.assert_trees_all_equal(sample, optim.mean_field_vi_sample(params, vi_state, key, NUM_DATA))
        for name in params:
            std = row_std[name]
            # 20k draws: the mean is within 4 / sqrt(20k) = 0.03 std, the std within 5 / sqrt(2 * 20k) = 2.5 %.
            np.testing.assert_array_less(np.abs(sample[name].mean(1) - params[name][:, 0]) / std, 0.03)
            np.testing.assert_allclose(sample[name].std(1), std, rtol=0.025)
        with self.assertRaisesRegex(ValueError, "exactly one MeanFieldVIState"):
            optim.mean_field_vi_sample(params, optax.sgd(0.1).init(params), key, NUM_DATA)

    def test_bad_hyper_parameters_are_all_named_and_grad_fn_is_required(self):
        with self.assertRaises(ValueError) as raised:
            optim.mean_field_vi(0.0, 0, prior_precision=0.0, init_std=-1.0, b1=1.0, b2=-0.1)
        for name in ("learning_rate", "num_data", "prior_precision", "init_std", "b1", "b2"):
            self.assertIn(f"{name} must", str(raised.exception))
        with self.assertRaisesRegex(ValueError, "init_std must be > 0"):
            optim.bayes_by_backprop(optax.sgd(0.1), 10, prior_precision=1.0, init_std=0.0)
        params = {"w": jnp.ones(2)}
        tx = optim.mean_field_vi(0.1, 10)
        with self.assertRaisesRegex(ValueError, "grad_fn"):
            tx.update(None, tx.init(params), params)


def test_registry_entry_builds_the_documented_transformation():
    spec = optim.get_optimizer_spec("vi")
    assert not spec.uses_clean_gradient and spec.posterior_sample is optim.mean_field_vi_sample
    assert "arXiv:1505.05424" in spec.summary
    config = default_config()
    config.seed = 4
    config.optimizer.name = "vi"
    config.optimizer.schedule = "constant"
    config.optimizer.learning_rate = 0.05
    changed = {"prior_precision": 3.0, "init_std": 0.2, "b1": 0.8, "b2": 0.99}
    for field, value in changed.items():
        config.optimizer.vi[field] = value
    optim.validate_hparams("vi", config.optimizer.vi.to_dict())
    built = make_optimizer(config, total_steps=10, num_train=NUM_DATA)

    params, x, y = make_problem(5)
    (noise,) = _noises(params, 1, seed=8)
    grad_fn = jax.grad(lambda p: loss(p, x, y))
    by_hand = optim.mean_field_vi(optax.constant_schedule(0.05), NUM_DATA, **changed, seed=4)
    state = built.init(params)
    chex.assert_trees_all_equal(state, by_hand.init(params))  # same seed, init_std
    chex.assert_trees_all_close(
        built.update(None, state, params, grad_fn=grad_fn, noise=noise),
        by_hand.update(None, state, params, grad_fn=grad_fn, noise=noise),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "field, bad", [("prior_precision", 0.0), ("init_std", -1e-3), ("b1", 1.0), ("b2", -0.1), ("init_std", "x")]
)
def test_registry_rejects_bad_values_by_name(field, bad):
    hparams = {**optim.get_optimizer_spec("vi").defaults, field: bad}
    with pytest.raises(ValueError, match=rf"^vi\.{field}\b"):
        optim.validate_hparams("vi", hparams)


def test_default_init_std_round_trips_through_softplus():
    tx = optim.mean_field_vi(0.1, NUM_DATA)
    rho = tx.init({"w": jnp.zeros(3)}).rho["w"]
    np.testing.assert_allclose(jax.nn.softplus(rho), optim.get_optimizer_spec("vi").defaults["init_std"], rtol=1e-12)
