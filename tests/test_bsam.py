"""bSAM (``sam_jax.optim.bsam``, ``scale_by_bsam``) against a NumPy float64 transcription of Algorithm 1 of
Möllenhoff & Khan (2022), "SAM as an Optimal Relaxation of Bayes", arXiv:2210.01620."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from tests.tanh_regression import loss, make_problem, numpy_grad

NUM_DATA = 50
NUM_STEPS = 3
HYPER = dict(beta1=0.8, beta2=0.9, prior_precision=5.0, damping=0.1, init_precision=2.0)


pytestmark = pytest.mark.usefixtures("float64")


def numpy_bsam(
    params,
    x,
    y,
    noises,
    learning_rates,
    rho,
    beta1,
    beta2,
    prior_precision,
    damping,
    init_precision,
    max_direction_norm=None,
) -> tuple[dict, dict, dict]:
    """Algorithm 1, lines 1-9, with ``delta = prior_precision / N`` and the given standard-normal draws.

    With ``max_direction_norm`` the direction ``gm / s`` of line 9 is clipped to that global norm
    before it is scaled by ``alpha`` (``optax.clip_by_global_norm`` between the two).
    """
    delta = prior_precision / NUM_DATA
    w = {k: v.copy() for k, v in params.items()}
    s = {k: np.full_like(v, init_precision) for k, v in params.items()}
    gm = {k: np.zeros_like(v) for k, v in params.items()}
    for z, alpha in zip(noises, learning_rates):
        theta = {k: w[k] + z[k] / np.sqrt(NUM_DATA * s[k]) for k in w}
        g = numpy_grad(theta, x, y)
        g_eps = numpy_grad({k: w[k] + rho * g[k] / s[k] for k in w}, x, y)
        gm = {k: beta1 * gm[k] + (1 - beta1) * (g_eps[k] + delta * w[k]) for k in w}
        s = {k: beta2 * s[k] + (1 - beta2) * (np.sqrt(s[k]) * np.abs(g[k]) + delta + damping) for k in w}
        direction = {k: gm[k] / s[k] for k in w}
        if max_direction_norm is not None:
            norm = np.sqrt(sum(np.sum(d**2) for d in direction.values()))
            direction = {k: d * min(1.0, max_direction_norm / norm) for k, d in direction.items()}
        w = {k: w[k] - alpha * direction[k] for k in w}
    return w, s, gm


def _step_fn(tx, grad_fn, with_clean_gradient=False):
    def step(params, state, noise):
        grads = grad_fn(params) if with_clean_gradient else None
        updates, state = tx.update(grads, state, params, grad_fn=grad_fn, noise=noise)
        return optax.apply_updates(params, updates), state

    return step


def _noises(params, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(NUM_STEPS)]


def _cosine(t):
    return 0.5 * 0.5 * (1 + np.cos(np.pi * t / NUM_STEPS))


class BsamTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("constant", "constant"), ("cosine", "cosine"))
    def test_bsam_matches_algorithm_1_with_given_noise(self, schedule):
        params, x, y = make_problem()
        noises = _noises(params)
        rho = 0.2
        if schedule == "constant":
            learning_rate, learning_rates = 0.3, [0.3] * NUM_STEPS
        else:
            learning_rate = optax.cosine_decay_schedule(0.5, NUM_STEPS)
            learning_rates = [_cosine(t) for t in range(NUM_STEPS)]
        tx = optim.bsam(learning_rate, rho, NUM_DATA, **HYPER)
        step = self.variant(_step_fn(tx, jax.grad(lambda p: loss(p, x, y))))
        ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for noise in noises:
            ours, state = step(ours, state, noise)
        w, s, gm = numpy_bsam(params, x, y, noises, learning_rates, rho, **HYPER)
        bsam_state, _ = state
        chex.assert_trees_all_close(
            (ours, bsam_state.precision, bsam_state.momentum), (w, s, gm), rtol=1e-10, atol=1e-12
        )

    @parameterized.named_parameters(("clip_before", "before"), ("clip_after", "after"))
    def test_chain_with_schedule_and_clipping_matches_reference(self, clip_position):
        # Before scale_by_bsam the clip sees only `grads`, which Algorithm 1 never uses: no effect.
        # After it, the clip acts on the direction gm / s of line 9.
        params, x, y = make_problem(3)
        noises = _noises(params, seed=4)
        rho, max_norm = 0.1, 0.05
        schedule = optax.cosine_decay_schedule(0.5, NUM_STEPS)
        direction = optim.scale_by_bsam(rho, NUM_DATA, **HYPER)
        clip = optax.clip_by_global_norm(max_norm)
        parts = [clip, direction] if clip_position == "before" else [direction, clip]
        tx = optax.chain(*parts, optax.scale_by_learning_rate(schedule))
        step = jax.jit(_step_fn(tx, jax.grad(lambda p: loss(p, x, y)), with_clean_gradient=True))
        ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for noise in noises:
            ours, state = step(ours, state, noise)
        learning_rates = [_cosine(t) for t in range(NUM_STEPS)]
        unclipped, _, _ = numpy_bsam(params, x, y, noises, learning_rates, rho, **HYPER)
        clipped, _, _ = numpy_bsam(params, x, y, noises, learning_rates, rho, **HYPER, max_direction_norm=max_norm)
        self.assertGreater(np.abs(clipped["w"] - unclipped["w"]).max(), 1e-3)  # the clip is active
        chex.assert_trees_all_close(ours, unclipped if clip_position == "before" else clipped, rtol=1e-10, atol=1e-12)

    def test_own_noise_is_reproducible_and_advances_the_key(self):
        params, x, y = make_problem(2)
        grad_fn = jax.grad(lambda p: loss(p, x, y))
        tx = optim.scale_by_bsam(0.05, NUM_DATA, prior_precision=1.0, seed=3)
        chex.clear_trace_counter()

        @jax.jit
        @chex.assert_max_traces(n=1)
        def step(params, state):
            return tx.update(None, state, params, grad_fn=grad_fn)

        state = tx.init(params)
        first, next_state = step(params, state)
        again, _ = step(params, state)
        second, _ = step(params, next_state)
        chex.assert_trees_all_equal(first, again)
        self.assertFalse(np.array_equal(state.key, next_state.key))
        self.assertFalse(np.allclose(first["w"], second["w"]))
        chex.assert_tree_all_finite(second)

    def test_posterior_samples_have_variance_one_over_n_s(self):
        # One draw of wide leaves whose rows share a precision: each row holds 20k samples of N(w, 1/(N s)).
        width = 20_000
        params = {"w": jnp.full((3, width), 0.5), "b": jnp.zeros((3, width))}
        row_precision = {"w": jnp.array([0.5, 1.0, 2.0]), "b": jnp.array([4.0, 8.0, 16.0])}
        tx = optim.bsam(0.1, 0.05, NUM_DATA, prior_precision=1.0)
        bsam_state, schedule_state = tx.init(params)
        bsam_state = bsam_state._replace(
            precision=jax.tree.map(lambda s, w: jnp.broadcast_to(s[:, None], w.shape), row_precision, params)
        )
        sample = optim.bsam_sample(params, (bsam_state, schedule_state), jax.random.PRNGKey(0), NUM_DATA)
        # The chain's state and the BSAMState inside it give the same draw.
        chex.assert_trees_all_equal(sample, optim.bsam_sample(params, bsam_state, jax.random.PRNGKey(0), NUM_DATA))
        for name in params:
            std = 1.0 / np.sqrt(NUM_DATA * row_precision[name])
            # 20k draws: the mean is within 4 / sqrt(20k) = 0.03 std, the variance within 5 * sqrt(2 / 20k) = 5 %.
            np.testing.assert_array_less(np.abs(sample[name].mean(1) - params[name][:, 0]) / std, 0.03)
            np.testing.assert_allclose(sample[name].var(1), std**2, rtol=0.05)

    @parameterized.named_parameters(("m2", 2), ("m4", 4), ("m8_whole_batch_stacked", 8))
    def test_m_sharpness_matches_per_sub_batch_reference(self, m):
        # The paper's m-sharpness for bSAM (Sec. 5, App. H): each sub-batch of m examples has its own
        # noise (line 3), gradient (line 4), perturbation (line 5) and perturbed gradient (line 6);
        # line 7 averages the g_eps_i and line 8 the sqrt(s) |g_i| over the sub-batches.
        batch_size, rho = 8, 0.2
        params, x, y = make_problem(5, batch_size)
        num_sub = batch_size // m
        rng = np.random.default_rng(7)
        noises = [
            [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(num_sub)] for _ in range(NUM_STEPS)
        ]
        delta = HYPER["prior_precision"] / NUM_DATA
        w = {k: v.copy() for k, v in params.items()}
        s = {k: np.full_like(v, HYPER["init_precision"]) for k, v in params.items()}
        gm = {k: np.zeros_like(v) for k, v in params.items()}
        for step_noises in noises:
            g_eps_mean = {k: np.zeros_like(v) for k, v in w.items()}
            g_scale_mean = {k: np.zeros_like(v) for k, v in w.items()}
            for i, z in enumerate(step_noises):
                xi, yi = x[i * m : (i + 1) * m], y[i * m : (i + 1) * m]
                g = numpy_grad({k: w[k] + z[k] / np.sqrt(NUM_DATA * s[k]) for k in w}, xi, yi)
                g_eps = numpy_grad({k: w[k] + rho * g[k] / s[k] for k in w}, xi, yi)
                for k in w:
                    g_eps_mean[k] += g_eps[k] / num_sub
                    g_scale_mean[k] += np.sqrt(s[k]) * np.abs(g[k]) / num_sub
            gm = {k: HYPER["beta1"] * gm[k] + (1 - HYPER["beta1"]) * (g_eps_mean[k] + delta * w[k]) for k in w}
            s = {
                k: HYPER["beta2"] * s[k] + (1 - HYPER["beta2"]) * (g_scale_mean[k] + delta + HYPER["damping"])
                for k in w
            }
            w = {k: w[k] - 0.3 * gm[k] / s[k] for k in w}

        sub_x, sub_y = jnp.asarray(x).reshape(num_sub, m, -1), jnp.asarray(y).reshape(num_sub, m, -1)
        stacked_grad_fn = lambda stacked: jax.vmap(jax.grad(loss))(stacked, sub_x, sub_y)
        tx = optim.bsam(0.3, rho, NUM_DATA, **HYPER, num_sub_batches=num_sub)
        step = jax.jit(_step_fn(tx, stacked_grad_fn))
        ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for step_noises in noises:
            stacked_noise = jax.tree.map(lambda *leaves: jnp.stack(leaves), *step_noises)
            ours, state = step(ours, state, stacked_noise)
        chex.assert_trees_all_close((ours, state[0].precision, state[0].momentum), (w, s, gm), rtol=1e-10, atol=1e-12)

    def test_m_sharpness_draws_independent_noise_per_sub_batch(self):
        params, x, y = make_problem(6)
        seen = []

        def stacked_grad_fn(stacked):
            seen.append(stacked)
            return jax.tree.map(jnp.zeros_like, stacked)

        tx = optim.scale_by_bsam(0.1, NUM_DATA, prior_precision=1.0, num_sub_batches=4)
        tx.update(None, tx.init(params), jax.tree.map(jnp.asarray, params), grad_fn=stacked_grad_fn)
        noisy = seen[0]["w"]
        self.assertEqual(noisy.shape, (4, 3, 2))
        self.assertEqual(len({tuple(np.asarray(row).ravel().round(12)) for row in noisy}), 4)

    def test_invalid_arguments_raise(self):
        for bad in (
            dict(num_sub_batches=-1),
            dict(rho=-0.1),
            dict(num_data=0),
            dict(beta1=1.0),
            dict(beta2=-0.1),
            dict(damping=-1.0),
            dict(prior_precision=-1.0),
            dict(init_precision=0.0),
            dict(learning_rate=0.0),
        ):
            kwargs = dict(learning_rate=0.1, rho=0.05, num_data=10, prior_precision=1.0) | bad
            with self.assertRaisesRegex(ValueError, "Bad bSAM hyper-parameters"):
                optim.bsam(**kwargs)
            if "learning_rate" not in bad:
                del kwargs["learning_rate"]
                with self.assertRaisesRegex(ValueError, "Bad bSAM hyper-parameters"):
                    optim.scale_by_bsam(**kwargs)
        with self.assertRaises(TypeError):  # prior_precision is required: no hidden default
            optim.scale_by_bsam(0.05, 10)
        params = {"w": jnp.ones(2)}
        tx = optim.bsam(0.1, 0.05, 10, prior_precision=1.0)
        with self.assertRaisesRegex(ValueError, "grad_fn"):
            tx.update(None, tx.init(params), params)
        with self.assertRaisesRegex(ValueError, "exactly one BSAMState"):
            optim.bsam_sample(params, optax.sgd(0.1).init(params), jax.random.PRNGKey(0), 10)
