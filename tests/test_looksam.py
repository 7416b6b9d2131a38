"""LookSAM (``sam_jax.optim.looksam``) against a NumPy float64 transcription of Liu et al. 2022, Algorithm 1,
and the count of gradient passes its jitted step executes."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from sam_jax.losses import get_stateful_loss
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_train_step
from tests.tanh_regression import loss, make_problem, numpy_grad, run_steps

pytestmark = pytest.mark.usefixtures("float64")

NUM_STEPS = 7  # SAM steps at 0, 3, 6 for k = 3: two stretches of reuse
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.7, 1e-2
RHO, ALPHA = 0.3, 0.5  # not the registry's defaults


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def numpy_looksam(params, x, y, k, alpha) -> list[dict]:
    """Algorithm 1 of Liu et al. (2022) with SGD (momentum, L2 decay) taking the step with g_s."""
    params = {key: v.copy() for key, v in params.items()}
    trace = {key: np.zeros_like(v) for key, v in params.items()}
    g_v, history = None, []
    for t in range(NUM_STEPS):
        g = numpy_grad(params, x, y)
        if t % k == 0:
            g_s = numpy_grad({key: params[key] + RHO * g[key] / np_norm(g) for key in params}, x, y)
            cos = sum(np.sum(g[key] * g_s[key]) for key in g) / (np_norm(g) * np_norm(g_s))
            g_v = {key: g_s[key] - np_norm(g_s) * cos * g[key] / np_norm(g) for key in g}
        else:
            g_s = {key: g[key] + alpha * np_norm(g) / np_norm(g_v) * g_v[key] for key in g}
        trace = {key: g_s[key] + WEIGHT_DECAY * params[key] + MOMENTUM * trace[key] for key in params}
        params = {key: params[key] - LEARNING_RATE * trace[key] for key in params}
        history.append(params)
    return history


def _base():
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=MOMENTUM))


def _run(tx, params, x, y, step_fn=jax.jit):
    grad_fn = jax.grad(lambda p: loss(p, x, y))
    return run_steps(tx, params, grad_fn, grad_fn, NUM_STEPS, step_fn)


class LookSAMTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("k2", 2), ("k3", 3))
    def test_matches_numpy_reference(self, k):
        params, x, y = make_problem(0)
        ours = _run(optim.looksam(_base(), RHO, k=k, alpha=ALPHA), params, x, y, step_fn=self.variant)
        expected = numpy_looksam(params, x, y, k, ALPHA)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_k_one_is_sam_exactly(self):
        params, x, y = make_problem(1)
        ours = _run(optim.looksam(_base(), RHO, k=1, alpha=ALPHA), params, x, y)
        theirs = _run(optim.sam(_base(), RHO), params, x, y)
        chex.assert_trees_all_equal(ours, theirs)

    def test_sam_steps_equal_sam_and_reuse_steps_differ(self):
        params, x, y = make_problem(2)
        k = 3
        ours = _run(optim.looksam(_base(), RHO, k=k, alpha=ALPHA), params, x, y)
        theirs = _run(optim.sam(_base(), RHO), params, x, y)
        chex.assert_trees_all_equal(ours[0], theirs[0])  # step 0 is a SAM step
        self.assertGreater(np.max(np.abs(ours[1]["w"] - theirs[1]["w"])), 1e-8)

    def test_state_holds_the_orthogonal_component_of_the_last_sam_step(self):
        params, x, y = make_problem(3)
        params = jax.tree.map(jnp.asarray, params)
        grad_fn = jax.grad(lambda p: loss(p, x, y))
        tx = optim.looksam(optax.sgd(LEARNING_RATE), RHO, k=2, alpha=ALPHA)
        g = grad_fn(params)
        updates, state = tx.update(g, tx.init(params), params, grad_fn=grad_fn)
        g_s = jax.tree.map(lambda u: -u / LEARNING_RATE, updates)
        self.assertLess(abs(float(optax.tree.vdot(state.orthogonal, g))), 1e-14)  # orthogonal to g
        chex.assert_trees_all_close(optim.orthogonal_component(g_s, g), state.orthogonal, rtol=1e-10)
        self.assertGreater(float(optax.tree.norm(state.orthogonal)), 1e-6)
        params = optax.apply_updates(params, updates)
        _, reused = tx.update(grad_fn(params), state, params, grad_fn=grad_fn)
        chex.assert_trees_all_equal(reused.orthogonal, state.orthogonal)  # kept on a reuse step
        self.assertEqual(int(reused.count), 2)

    def test_zero_gradient_gives_zero_update_not_nan(self):
        params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        tx = optim.looksam(optax.sgd(0.1), 0.05, k=2, alpha=0.5)
        step = jax.jit(lambda s: tx.update(zeros, s, params, grad_fn=lambda p: zeros))
        state = tx.init(params)
        for _ in range(3):  # a SAM step, a reuse step, a SAM step
            updates, state = step(state)
            chex.assert_trees_all_equal(updates, zeros)
            chex.assert_tree_all_finite(state)

    def test_step_compiles_once(self):
        params, x, y = make_problem(4)
        tx = optim.looksam(_base(), optax.linear_schedule(0.1, 0.3, 5), k=3, alpha=ALPHA)
        chex.clear_trace_counter()
        _run(tx, params, x, y, step_fn=lambda step: jax.jit(chex.assert_max_traces(step, n=1)))

    def test_invalid_arguments_raise(self):
        for k in (0, -1, 2.5, True):
            with self.assertRaisesRegex(ValueError, "k must be a positive integer"):
                optim.looksam(optax.sgd(0.1), 0.05, k=k, alpha=0.5)
        with self.assertRaisesRegex(ValueError, "alpha must be >= 0"):
            optim.looksam(optax.sgd(0.1), 0.05, k=2, alpha=-0.5)
        with self.assertRaisesRegex(ValueError, "rho must be >= 0"):
            optim.looksam(optax.sgd(0.1), -0.05, k=2, alpha=0.5)


class _CountedForward(nn.Module):
    """A linear classifier whose every executed forward pass calls back to the host once."""

    @nn.compact
    def __call__(self, x, train=False):
        jax.debug.callback(lambda: _FORWARD_PASSES.append(1))
        return nn.Dense(3)(x)


_FORWARD_PASSES: list[int] = []


@pytest.mark.parametrize("k", [1, 3])
def test_jitted_train_step_runs_the_second_pass_only_on_sam_steps(k):
    """In the loop's jitted train step, the forward passes executed per step are 2 on SAM steps (clean
    and perturbed) and 1 in between: the lax.cond skips the second gradient, it does not mask it."""
    model = _CountedForward()
    rng = np.random.default_rng(0)
    images, labels = jnp.asarray(rng.normal(size=(8, 4))), jnp.asarray(rng.integers(0, 3, 8))
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    tx = optim.looksam(optax.sgd(0.1), 0.05, k=k, alpha=0.7)
    step = jax.jit(make_train_step(model, tx, get_stateful_loss("cross_entropy")))
    state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params), jax.random.PRNGKey(1), ())
    batch = {"image": images, "label": labels, "index": jnp.arange(8)}
    per_step = []
    for _ in range(6):
        before = len(_FORWARD_PASSES)
        state, _ = step(state, batch)
        jax.effects_barrier()
        per_step.append(len(_FORWARD_PASSES) - before)
    assert per_step == [2 if t % k == 0 else 1 for t in range(6)]
