"""VaSSO (``sam_jax.optim.vasso``) against a NumPy float64 reference on the tanh-regression problem."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from tests.tanh_regression import loss, make_problem, numpy_grad, run_steps

LEARNING_RATE = 0.1
MOMENTUM = 0.9
NUM_STEPS = 4
RHO = 0.3  # large, so the perturbed gradient differs clearly from the clean one

pytestmark = pytest.mark.usefixtures("float64")


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def numpy_vasso_momentum(params, x, y, rho, theta, weight_decay=0.0) -> list[dict]:
    """Parameters after each step of VaSSO around SGD with heavy-ball momentum, from the definitions:
    d_0 = g_0, d_t = (1 - theta) d_{t-1} + theta g_t, e_t = rho d_t / ||d_t||."""
    params = {k: v.copy() for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in params.items()}
    d = None
    history = []
    for _ in range(NUM_STEPS):
        g = numpy_grad(params, x, y)
        d = g if d is None else {k: (1 - theta) * d[k] + theta * g[k] for k in g}
        e = {k: rho * d[k] / np_norm(d) for k in d}
        descent = numpy_grad({k: params[k] + e[k] for k in params}, x, y)
        trace = {k: descent[k] + weight_decay * params[k] + MOMENTUM * trace[k] for k in params}
        params = {k: params[k] - LEARNING_RATE * trace[k] for k in params}
        history.append(params)
    return history


def run(tx, params, x, y, step_fn=jax.jit) -> list[dict]:
    grad_fn = jax.grad(lambda p: loss(p, x, y))
    return run_steps(tx, params, grad_fn, grad_fn, NUM_STEPS, step_fn)


class VassoTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("theta_0.4", 0.4), ("theta_0.9", 0.9))
    def test_matches_numpy_reference(self, theta):
        params, x, y = make_problem()
        tx = optim.vasso(optax.sgd(LEARNING_RATE, momentum=MOMENTUM), RHO, theta=theta)
        ours = run(tx, params, x, y, step_fn=self.variant)
        expected = numpy_vasso_momentum(params, x, y, RHO, theta)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_weight_decay_lives_in_base(self):
        params, x, y = make_problem(1)
        weight_decay = 0.5
        base = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(LEARNING_RATE, momentum=MOMENTUM))
        ours = run(optim.vasso(base, RHO, theta=0.5), params, x, y)
        expected = numpy_vasso_momentum(params, x, y, RHO, 0.5, weight_decay=weight_decay)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_differs_from_sam_when_theta_below_one(self):
        params, x, y = make_problem(2)
        base = optax.sgd(LEARNING_RATE, momentum=MOMENTUM)
        ours = run(optim.vasso(base, RHO, theta=0.4), params, x, y)
        theirs = run(optim.sam(base, RHO), params, x, y)
        chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-12, atol=1e-14)  # d_0 = g_0
        self.assertGreater(np.max(np.abs(ours[-1]["w"] - theirs[-1]["w"])), 1e-6)

    def test_theta_one_is_sam_exactly(self):
        params, x, y = make_problem(3)
        base = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(LEARNING_RATE, momentum=MOMENTUM))
        ours = run(optim.vasso(base, RHO, theta=1.0), params, x, y)
        theirs = run(optim.sam(base, RHO), params, x, y)
        chex.assert_trees_all_equal(ours, theirs)

    def test_state_holds_the_moving_average(self):
        params, x, y = make_problem(4)
        theta = 0.4
        tx = optim.vasso(optax.sgd(LEARNING_RATE), RHO, theta=theta)
        grad_fn = jax.grad(lambda p: loss(p, x, y))
        params = jax.tree.map(jnp.asarray, params)
        state = tx.init(params)
        self.assertIsInstance(state, optim.VASSOState)
        g0 = grad_fn(params)
        updates, state = tx.update(g0, state, params, grad_fn=grad_fn)
        chex.assert_trees_all_close(state.ascent_direction, g0)
        params = optax.apply_updates(params, updates)
        g1 = grad_fn(params)
        _, state = tx.update(g1, state, params, grad_fn=grad_fn)
        expected = jax.tree.map(lambda a, b: (1 - theta) * a + theta * b, g0, g1)
        chex.assert_trees_all_close(state.ascent_direction, expected, rtol=1e-12)
        self.assertEqual(int(state.count), 2)

    def test_zero_gradient_gives_zero_update_not_nan(self):
        params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        tx = optim.vasso(optax.sgd(LEARNING_RATE), 0.05, theta=0.5)
        step = jax.jit(lambda s: tx.update(zeros, s, params, grad_fn=lambda p: zeros))
        state = tx.init(params)
        for _ in range(2):  # the first step (d = g) and a later one (the average)
            updates, state = step(state)
            chex.assert_trees_all_equal(updates, zeros)
            chex.assert_tree_all_finite(state)

    def test_step_compiles_once(self):
        params, x, y = make_problem(5)
        tx = optim.vasso(optax.sgd(LEARNING_RATE, momentum=MOMENTUM), optax.linear_schedule(0.1, 0.2, 5), theta=0.5)
        chex.clear_trace_counter()
        run(tx, params, x, y, step_fn=lambda step: jax.jit(chex.assert_max_traces(step, n=1)))

    def test_invalid_arguments_raise(self):
        with self.assertRaisesRegex(ValueError, "rho must be >= 0"):
            optim.vasso(optax.sgd(0.1), -0.1, theta=0.9)
        for theta in (0.0, -0.5, 1.5):
            with self.assertRaisesRegex(ValueError, "theta must be in"):
                optim.vasso(optax.sgd(0.1), 0.1, theta=theta)
        params = {"w": jnp.ones(2)}
        tx = optim.vasso(optax.sgd(0.1), 0.1, theta=0.9)
        with self.assertRaisesRegex(ValueError, "grad_fn"):
            tx.update(params, tx.init(params), params)
        with self.assertRaisesRegex(ValueError, "needs params"):
            tx.update(params, tx.init(params), grad_fn=lambda p: p)
