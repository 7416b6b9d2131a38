"""IVON (``sam_jax.optim.ivon``) against a NumPy float64 transcription of Shen et al. 2024, Algorithm 1,
and its posterior samples against the state's variance."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sam_jax import optim
from tests.tanh_regression import loss, make_problem, numpy_grad

pytestmark = pytest.mark.usefixtures("float64")

NUM_STEPS = 6
LR = 0.3
# Not the defaults: a small ess and h0 give noise and Hessian estimates that matter within a few
# steps, beta2 = 0.9 makes the correction term of the h update visible, and the clip radius bites.
HPARAMS = dict(ess=40.0, hess_init=0.05, beta1=0.8, beta2=0.9, weight_decay=0.02, clip_radius=2.0)


def np_cosine_lr(t: int) -> float:
    return LR * 0.5 * (1 + math.cos(math.pi * min(t, NUM_STEPS) / NUM_STEPS))


def numpy_ivon(params, x, y, noises, *, ess, hess_init, beta1, beta2, weight_decay, clip_radius):
    """Algorithm 1 of Shen et al. (2024), one sample per step, the given standard-normal draws.

    Returns the means after each step, the final (g, h, sigma) and how many entries were clipped."""
    m = {k: v.copy() for k, v in params.items()}
    g = {k: np.zeros_like(v) for k, v in params.items()}
    h = {k: np.full_like(v, hess_init) for k, v in params.items()}
    sigma = {k: 1 / np.sqrt(ess * (h[k] + weight_decay)) for k in h}
    history, clipped = [], 0
    for t, z in enumerate(noises, start=1):
        theta = {k: m[k] + sigma[k] * z[k] for k in m}  # theta ~ q
        g_hat = numpy_grad(theta, x, y)
        h_hat = {k: g_hat[k] * (theta[k] - m[k]) / sigma[k] ** 2 for k in m}
        g = {k: beta1 * g[k] + (1 - beta1) * g_hat[k] for k in m}
        h = {
            k: beta2 * h[k]
            + (1 - beta2) * h_hat[k]
            + 0.5 * (1 - beta2) ** 2 * (h[k] - h_hat[k]) ** 2 / (h[k] + weight_decay)
            for k in m
        }
        g_bar = {k: g[k] / (1 - beta1**t) for k in m}
        step = {k: (g_bar[k] + weight_decay * m[k]) / (h[k] + weight_decay) for k in m}
        clipped += sum(int(np.sum(np.abs(v) > clip_radius)) for v in step.values())
        m = {k: m[k] - np_cosine_lr(t - 1) * np.clip(step[k], -clip_radius, clip_radius) for k in m}
        sigma = {k: 1 / np.sqrt(ess * (h[k] + weight_decay)) for k in h}
        history.append(m)
    return history, (g, h, sigma), clipped


def _noises(params, seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(NUM_STEPS)]


def _run(tx, params, x, y, noises, step_fn=jax.jit):
    grad_fn = jax.grad(lambda p: loss(p, x, y))

    def step(params, state, noise):
        updates, state = tx.update(None, state, params, grad_fn=grad_fn, noise=noise)
        return optax.apply_updates(params, updates), state

    step = step_fn(step)
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    history = []
    for noise in noises:
        params, state = step(params, state, jax.tree.map(jnp.asarray, noise))
        history.append(params)
    return history, state


def _ivon(**overrides):
    hparams = {**HPARAMS, **overrides}
    return optim.ivon(optax.cosine_decay_schedule(LR, NUM_STEPS), hparams.pop("ess"), **hparams)


class IVONTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_reference(self):
        params, x, y = make_problem(0)
        noises = _noises(params)
        ours, state = _run(_ivon(), params, x, y, noises, step_fn=self.variant)
        expected, (g, h, sigma), clipped = numpy_ivon(params, x, y, noises, **HPARAMS)
        self.assertGreater(clipped, 0)  # the clip radius bites on some entries ...
        self.assertLess(clipped, NUM_STEPS * 8)  # ... and not on all
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)
        ivon_state = state[0]
        self.assertIsInstance(ivon_state, optim.IVONState)
        chex.assert_trees_all_close(
            (ivon_state.momentum, ivon_state.hessian, ivon_state.std), (g, h, sigma), rtol=1e-10, atol=1e-12
        )
        self.assertEqual(int(ivon_state.count), NUM_STEPS)

    def test_every_hyper_parameter_matters(self):
        params, x, y = make_problem(1)
        noises = _noises(params, 1)
        reference, _ = _run(_ivon(), params, x, y, noises)
        for field, value in dict(
            ess=80.0, hess_init=0.2, beta1=0.5, beta2=0.5, weight_decay=0.1, clip_radius=math.inf
        ).items():
            changed, _ = _run(_ivon(**{field: value}), params, x, y, noises)
            self.assertGreater(np.max(np.abs(changed[-1]["w"] - reference[-1]["w"])), 1e-8, field)

    def test_hessian_correction_keeps_the_precision_positive(self):
        # A concave loss gives negative Hessian estimates: without its correction term the h update
        # would take h + delta below 0; with it, h + delta stays positive.
        params = {"w": jnp.ones(5)}
        grad_fn = jax.grad(lambda p: -2.0 * jnp.sum(p["w"] ** 2))
        beta2, delta = 0.5, 1e-3
        tx = optim.ivon(0.01, 10.0, hess_init=0.1, beta2=beta2, weight_decay=delta)
        state = tx.init(params)
        step = jax.jit(lambda p, s, z: tx.update(None, s, p, grad_fn=grad_fn, noise=z))
        uncorrected_negative = False
        for seed in range(10):
            noise = {"w": jax.random.normal(jax.random.PRNGKey(seed), (5,))}
            ivon_state = state[0]
            theta = params["w"] + ivon_state.std["w"] * noise["w"]
            h_hat = grad_fn({"w": theta})["w"] * noise["w"] / ivon_state.std["w"]
            uncorrected_negative |= bool(jnp.any(beta2 * ivon_state.hessian["w"] + (1 - beta2) * h_hat + delta <= 0))
            updates, state = step(params, state, noise)
            params = optax.apply_updates(params, updates)
            self.assertTrue(bool(jnp.all(state[0].hessian["w"] + delta > 0)))
        self.assertTrue(uncorrected_negative)

    def test_samples_have_the_state_variance(self):
        params, x, y = make_problem(2)
        tx = _ivon()
        _, state = _run(tx, params, x, y, _noises(params, 2))  # a trained, non-uniform posterior
        means = jax.tree.map(jnp.asarray, params)
        num_samples = 20_000
        samples = jax.jit(jax.vmap(lambda key: optim.ivon_sample(means, state, key)))(
            jax.random.split(jax.random.PRNGKey(7), num_samples)
        )
        variance = jax.tree.map(lambda h: 1 / (HPARAMS["ess"] * (h + HPARAMS["weight_decay"])), state[0].hessian)
        self.assertGreater(float(optax.tree.max(variance)) / float(jnp.min(variance["w"])), 1.01)  # not uniform
        for name in means:
            sample_mean = np.mean(samples[name], axis=0)
            sample_variance = np.var(samples[name], axis=0, ddof=1)
            std_error = np.sqrt(variance[name] / num_samples)
            np.testing.assert_array_less(np.abs(sample_mean - means[name]), 5 * std_error)
            # The sample variance's relative standard error is sqrt(2 / (n - 1)) = 1 %; allow 5 of them.
            np.testing.assert_allclose(sample_variance, variance[name], rtol=5 * math.sqrt(2 / (num_samples - 1)))

    def test_key_is_split_every_step_and_sampling_without_hook_is_finite(self):
        params, x, y = make_problem(3)
        params = jax.tree.map(jnp.asarray, params)
        grad_fn = jax.grad(lambda p: loss(p, x, y))
        tx = _ivon()
        state = tx.init(params)
        updates, new_state = jax.jit(lambda s: tx.update(None, s, params, grad_fn=grad_fn))(state)
        chex.assert_tree_all_finite((updates, new_state))
        self.assertFalse(bool(jnp.all(new_state[0].key == state[0].key)))

    def test_step_compiles_once(self):
        params, x, y = make_problem(4)
        chex.clear_trace_counter()
        _run(_ivon(), params, x, y, _noises(params, 4), step_fn=lambda step: jax.jit(chex.assert_max_traces(step, n=1)))

    def test_sample_needs_an_ivon_state(self):
        params = {"w": jnp.ones(3)}
        with self.assertRaisesRegex(ValueError, "ivon_sample needs an optimizer state holding exactly one IVONState"):
            optim.ivon_sample(params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0))

    def test_invalid_arguments_raise(self):
        for field, value in dict(
            ess=0.0, hess_init=0.0, beta1=1.0, beta2=-0.1, weight_decay=0.0, clip_radius=0.0, learning_rate=0.0
        ).items():
            kwargs = {**HPARAMS, "learning_rate": 0.1, field: value}
            with self.assertRaisesRegex(ValueError, rf"{field} must"):
                optim.ivon(kwargs.pop("learning_rate"), kwargs.pop("ess"), **kwargs)
