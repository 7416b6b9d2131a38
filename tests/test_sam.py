"""SAM, ASAM and SSAM (``sam_jax.optim.sam``) against a NumPy float64 reference on a tiny model."""

from collections.abc import Callable

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
NUM_STEPS = 3


pytestmark = pytest.mark.usefixtures("float64")


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def numpy_descent_gradient(params, x, y, rho, adaptive=False, eta=0.0, renormalize=False) -> dict:
    """One SAM/ASAM/SSAM descent gradient, written from the definitions."""
    g = numpy_grad(params, x, y)
    if adaptive:
        t = {k: np.abs(v) + eta for k, v in params.items()}
        norm = np_norm({k: t[k] * g[k] for k in g})
        e = {k: rho * t[k] ** 2 * g[k] / norm for k in g}
    else:
        e = {k: rho * g[k] / np_norm(g) for k in g}
    descent = numpy_grad({k: params[k] + e[k] for k in params}, x, y)
    if renormalize:
        descent = {k: v * np_norm(g) / np_norm(descent) for k, v in descent.items()}
    return descent


def numpy_sam_momentum(params, x, y, rhos, weight_decay=0.0, **kwargs) -> list[dict]:
    """Parameters after each step of SAM around SGD with heavy-ball momentum (optax.sgd's form)."""
    params = {k: v.copy() for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in params.items()}
    history = []
    for rho in rhos:
        descent = numpy_descent_gradient(params, x, y, rho, **kwargs)
        trace = {k: descent[k] + weight_decay * params[k] + MOMENTUM * trace[k] for k in params}
        params = {k: params[k] - LEARNING_RATE * trace[k] for k in params}
        history.append(params)
    return history


def run(
    tx: optax.GradientTransformationExtraArgs,
    params,
    x,
    y,
    num_steps: int,
    step_fn: Callable = jax.jit,
    adapt_grad_fn: Callable = lambda grad_fn: grad_fn,
) -> list[dict]:
    """Runs ``num_steps`` of ``tx`` on ``loss`` and returns the parameters after each step.

    ``step_fn`` wraps the step (jit or a chex variant); ``adapt_grad_fn`` adapts the gradient
    closure to the signature ``tx`` expects as ``grad_fn``.
    """
    grad_fn = jax.grad(lambda p: loss(p, x, y))
    return run_steps(tx, params, grad_fn, adapt_grad_fn(grad_fn), num_steps, step_fn)


class SamTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("sam", dict()),
        ("asam", dict(adaptive=True, eta=0.01)),
        ("ssam", dict(renormalize=True)),
        ("asam_ssam", dict(adaptive=True, eta=0.1, renormalize=True)),
    )
    def test_matches_numpy_reference(self, kwargs):
        params, x, y = make_problem()
        rho = 0.3  # large, so the perturbed gradient differs clearly from the clean one
        tx = optim.sam(optax.sgd(LEARNING_RATE, momentum=MOMENTUM), rho, **kwargs)
        ours = run(tx, params, x, y, NUM_STEPS, step_fn=self.variant)
        expected = numpy_sam_momentum(params, x, y, [rho] * NUM_STEPS, **kwargs)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_weight_decay_lives_in_base_and_ascent_uses_loss_gradient_only(self):
        params, x, y = make_problem(1)
        weight_decay, rho = 0.5, 0.2
        base = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(LEARNING_RATE, momentum=MOMENTUM))
        ours = run(optim.sam(base, rho), params, x, y, NUM_STEPS)
        expected = numpy_sam_momentum(params, x, y, [rho] * NUM_STEPS, weight_decay=weight_decay)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_rho_schedule_is_indexed_by_step_count(self):
        params, x, y = make_problem(2)
        # Values exact in float32: optax schedules may compute in float32 from an int32 count.
        schedule = optax.linear_schedule(0.125, 0.375, transition_steps=NUM_STEPS - 1)
        ours = run(optim.sam(optax.sgd(LEARNING_RATE, momentum=MOMENTUM), schedule), params, x, y, NUM_STEPS)
        expected = numpy_sam_momentum(params, x, y, [0.125, 0.25, 0.375])
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    @parameterized.named_parameters(
        ("sgd_momentum", optax.sgd(LEARNING_RATE, momentum=MOMENTUM)),
        ("adamw", optax.adamw(1e-2, weight_decay=1e-2)),
    )
    def test_rho_zero_equals_base_exactly(self, base):
        params, x, y = make_problem(3)
        ours = run(optim.sam(base, 0.0), params, x, y, NUM_STEPS)
        expected = run(optax.with_extra_args_support(base), params, x, y, NUM_STEPS)
        chex.assert_trees_all_equal(ours, expected)
        self.assertFalse(np.allclose(ours[-1]["w"], params["w"]))

    def test_matches_optax_contrib_sam(self):
        params, x, y = make_problem(4)
        rho = 0.2
        contrib = optax.contrib.sam(
            optax.sgd(LEARNING_RATE, momentum=MOMENTUM),
            optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
            opaque_mode=True,
        )
        theirs = run(contrib, params, x, y, NUM_STEPS, adapt_grad_fn=lambda f: lambda p, _: f(p))
        ours = run(optim.sam(optax.sgd(LEARNING_RATE, momentum=MOMENTUM), rho), params, x, y, NUM_STEPS)
        chex.assert_trees_all_close(ours, theirs, rtol=1e-10, atol=1e-12)

    @parameterized.named_parameters(
        ("sam", dict()),
        ("asam", dict(adaptive=True, eta=0.01)),
        ("ssam", dict(renormalize=True)),
    )
    def test_zero_gradient_gives_zero_update_not_nan(self, kwargs):
        params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
        zeros = jax.tree.map(jnp.zeros_like, params)
        tx = optim.sam(optax.sgd(LEARNING_RATE), 0.05, **kwargs)
        updates, _ = jax.jit(lambda s: tx.update(zeros, s, params, grad_fn=lambda p: zeros))(tx.init(params))
        chex.assert_trees_all_equal(updates, zeros)

    def test_ssam_rescale_handles_zero_norms(self):
        g = {"w": jnp.array([3.0, 4.0])}
        zero = {"w": jnp.zeros(2)}
        chex.assert_trees_all_equal(optim.match_norm(zero, g), zero)
        chex.assert_trees_all_equal(optim.match_norm(g, zero), zero)
        chex.assert_trees_all_close(optim.match_norm({"w": jnp.array([0.0, 2.0])}, g), {"w": jnp.array([0.0, 5.0])})

    def test_step_compiles_once(self):
        params, x, y = make_problem(5)
        tx = optim.sam(optax.sgd(LEARNING_RATE, momentum=MOMENTUM), optax.linear_schedule(0.1, 0.2, 5))
        chex.clear_trace_counter()
        run(tx, params, x, y, 4, step_fn=lambda step: jax.jit(chex.assert_max_traces(step, n=1)))

    def test_invalid_arguments_raise(self):
        with self.assertRaisesRegex(ValueError, "rho must be >= 0"):
            optim.sam(optax.sgd(0.1), -0.1)
        with self.assertRaisesRegex(ValueError, "eta must be >= 0"):
            optim.sam(optax.sgd(0.1), 0.1, adaptive=True, eta=-1.0)
        params = {"w": jnp.ones(2)}
        tx = optim.sam(optax.sgd(0.1), 0.1)
        with self.assertRaisesRegex(ValueError, "grad_fn"):
            tx.update(params, tx.init(params), params)
        with self.assertRaisesRegex(ValueError, "needs params"):
            tx.update(params, tx.init(params), grad_fn=lambda p: p)
