"""GSAM (``sam_jax.optim.gsam``) against a NumPy float64 transcription of Zhuang et al. 2022, Algorithm 1."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from tests.tanh_regression import loss, make_problem, numpy_grad, run_steps

pytestmark = pytest.mark.usefixtures("float64")

NUM_STEPS = 5
LR_MAX, MOMENTUM, WEIGHT_DECAY = 0.2, 0.7, 1e-2
RHO_MAX, RHO_MIN, ALPHA = 0.4, 0.1, 0.3  # not the registry's defaults


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def np_dot(a: dict, b: dict) -> float:
    return float(sum(np.sum(a[k] * b[k]) for k in a))


def np_cosine_lr(t: int) -> float:
    return LR_MAX * 0.5 * (1 + math.cos(math.pi * min(t, NUM_STEPS) / NUM_STEPS))


def numpy_gsam(params, x, y, alpha, rho_max, rho_min) -> list[dict]:
    """Algorithm 1 of Zhuang et al. (2022) with SGD (momentum, L2 decay) taking step 4's direction."""
    lrs = [np_cosine_lr(t) for t in range(NUM_STEPS)]
    lr_max, lr_min = max(lrs), min(lrs)
    params = {k: v.copy() for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in params.items()}
    history = []
    for t in range(NUM_STEPS):
        rho = rho_min + (rho_max - rho_min) * (lrs[t] - lr_min) / (lr_max - lr_min)  # step 0
        g = numpy_grad(params, x, y)  # step 1
        g_p = numpy_grad({k: params[k] + rho * g[k] / np_norm(g) for k in params}, x, y)  # step 2
        parallel = np_dot(g, g_p) / np_norm(g_p) ** 2
        g_perp = {k: g[k] - parallel * g_p[k] for k in g}  # step 3: g = g_par + g_perp, g_par along g_p
        direction = {k: g_p[k] - alpha * g_perp[k] for k in g}  # step 4
        trace = {k: direction[k] + WEIGHT_DECAY * params[k] + MOMENTUM * trace[k] for k in params}
        params = {k: params[k] - lrs[t] * trace[k] for k in params}
        history.append(params)
    return history


def _base(schedule):
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(schedule, momentum=MOMENTUM))


def _run(tx, params, x, y, step_fn=jax.jit):
    grad_fn = jax.grad(lambda p: loss(p, x, y))
    return run_steps(tx, params, grad_fn, grad_fn, NUM_STEPS, step_fn)


def _lr_bounds(schedule) -> tuple[float, float]:
    lrs = [float(schedule(t)) for t in range(NUM_STEPS)]
    return max(lrs), min(lrs)


class GSAMTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_reference_with_rho_schedule(self):
        params, x, y = make_problem(0)
        schedule = optax.cosine_decay_schedule(LR_MAX, NUM_STEPS)
        lr_max, lr_min = _lr_bounds(schedule)
        rho = optim.gsam_rho_schedule(schedule, RHO_MAX, RHO_MIN, lr_max=lr_max, lr_min=lr_min)
        ours = _run(optim.gsam(_base(schedule), rho, alpha=ALPHA), params, x, y, step_fn=self.variant)
        expected = numpy_gsam(params, x, y, ALPHA, RHO_MAX, RHO_MIN)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_rho_schedule_follows_the_learning_rate(self):
        schedule = optax.cosine_decay_schedule(LR_MAX, NUM_STEPS)
        lr_max, lr_min = _lr_bounds(schedule)
        rho = optim.gsam_rho_schedule(schedule, RHO_MAX, RHO_MIN, lr_max=lr_max, lr_min=lr_min)
        values = [float(rho(t)) for t in range(NUM_STEPS)]
        np.testing.assert_allclose([values[0], values[-1]], [RHO_MAX, RHO_MIN], rtol=1e-12)
        self.assertTrue(all(a > b for a, b in zip(values, values[1:])))
        constant = optim.gsam_rho_schedule(optax.constant_schedule(0.1), RHO_MAX, RHO_MIN, lr_max=0.1, lr_min=0.1)
        self.assertEqual(float(constant(3)), RHO_MAX)

    def test_alpha_zero_is_sam_and_alpha_changes_the_steps(self):
        params, x, y = make_problem(1)
        base = _base(0.1)
        sam = _run(optim.sam(base, RHO_MAX), params, x, y)
        chex.assert_trees_all_close(_run(optim.gsam(base, RHO_MAX, alpha=0.0), params, x, y), sam, rtol=1e-14)
        gsam = _run(optim.gsam(base, RHO_MAX, alpha=ALPHA), params, x, y)
        self.assertGreater(np.max(np.abs(gsam[-1]["w"] - sam[-1]["w"])), 1e-6)

    def test_surrogate_gap_step_is_orthogonal_to_the_perturbed_gradient(self):
        # With a plain-gradient base, <update + lr g_p, g_p> = -lr (-alpha) <g_perp, g_p> = 0.
        params, x, y = make_problem(2)
        params = jax.tree.map(jnp.asarray, params)
        grad_fn = jax.grad(lambda p: loss(p, x, y))
        lr = 0.1
        tx = optim.gsam(optax.sgd(lr), RHO_MAX, alpha=ALPHA)
        updates, _ = tx.update(grad_fn(params), tx.init(params), params, grad_fn=grad_fn)
        g = grad_fn(params)
        g_p = grad_fn(optax.apply_updates(params, optim.ascent_perturbation(g, params, RHO_MAX)))
        extra = jax.tree.map(lambda u, gp: u + lr * gp, updates, g_p)
        self.assertLess(abs(float(optax.tree.vdot(extra, g_p))), 1e-14)
        self.assertGreater(float(optax.tree.norm(extra)), 1e-6)

    def test_zero_gradient_gives_zero_update_not_nan(self):
        params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        tx = optim.gsam(optax.sgd(0.1), 0.05, alpha=0.5)
        updates, state = jax.jit(lambda s: tx.update(zeros, s, params, grad_fn=lambda p: zeros))(tx.init(params))
        chex.assert_trees_all_equal(updates, zeros)
        chex.assert_tree_all_finite(state)

    def test_step_compiles_once(self):
        params, x, y = make_problem(3)
        schedule = optax.cosine_decay_schedule(LR_MAX, NUM_STEPS)
        rho = optim.gsam_rho_schedule(schedule, RHO_MAX, RHO_MIN, lr_max=LR_MAX, lr_min=0.0)
        chex.clear_trace_counter()
        _run(
            optim.gsam(_base(schedule), rho, alpha=ALPHA),
            params,
            x,
            y,
            step_fn=lambda step: jax.jit(chex.assert_max_traces(step, n=1)),
        )

    @parameterized.named_parameters(
        ("negative_alpha", dict(rho=0.1, alpha=-0.1), "alpha must be >= 0"),
        ("negative_rho", dict(rho=-0.1, alpha=0.1), "rho must be >= 0"),
    )
    def test_invalid_arguments_raise(self, kwargs, message):
        with self.assertRaisesRegex(ValueError, message):
            optim.gsam(optax.sgd(0.1), kwargs["rho"], alpha=kwargs["alpha"])

    def test_invalid_rho_schedule_raises(self):
        schedule = optax.constant_schedule(0.1)
        with self.assertRaisesRegex(ValueError, "rho_min <= rho_max"):
            optim.gsam_rho_schedule(schedule, 0.1, 0.2, lr_max=0.1, lr_min=0.0)
        with self.assertRaisesRegex(ValueError, "lr_max"):
            optim.gsam_rho_schedule(schedule, 0.2, 0.1, lr_max=0.0, lr_min=0.1)


def test_registry_radius_schedule_needs_the_run_length():
    blocks = optim.hparam_blocks({"gsam": {"rho": 0.1, "rho_min": 0.02}})
    context = optim.BuildContext(optax.cosine_decay_schedule(0.1, 10), 64, 0, blocks, 16)  # total_steps unknown
    with pytest.raises(ValueError, match="needs the run's total_steps"):
        optim.build_optimizer("gsam", context)
    optim.build_optimizer("gsam", context._replace(total_steps=10))
    constant = optim.hparam_blocks({"gsam": {"rho": 0.1, "rho_min": 0.1}})
    optim.build_optimizer("gsam", context._replace(blocks=constant))  # a constant radius needs no range
