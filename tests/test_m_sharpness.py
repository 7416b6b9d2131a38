"""m-sharpness SAM (``sam_jax.optim.m_sharpness``) against a NumPy float64 per-sub-batch reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from tests import tanh_regression
from tests.tanh_regression import numpy_grad, run_steps

BATCH_SIZE = 8
LEARNING_RATE = 0.1
NUM_STEPS = 2


pytestmark = pytest.mark.usefixtures("float64")


def make_problem(seed: int = 0) -> tuple[dict, dict]:
    """The shared tanh regression with a batch of ``BATCH_SIZE`` examples as a batch dict."""
    params, x, y = tanh_regression.make_problem(seed, BATCH_SIZE)
    return params, {"image": x, "label": y}


def loss(params, batch):
    return tanh_regression.loss(params, batch["image"], batch["label"])


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def numpy_m_sharpness(params, batch, m, rho, adaptive=False, eta=0.0, renormalize=False) -> list[dict]:
    """Plain SGD on the mean over sub-batches of per-sub-batch SAM/ASAM/SSAM descent gradients."""
    params = {k: v.copy() for k, v in params.items()}
    history = []
    for _ in range(NUM_STEPS):
        total = {k: np.zeros_like(v) for k, v in params.items()}
        for start in range(0, BATCH_SIZE, m):
            x, y = batch["image"][start : start + m], batch["label"][start : start + m]
            g = numpy_grad(params, x, y)
            t = {k: np.abs(v) + eta if adaptive else np.ones_like(v) for k, v in params.items()}
            norm = np_norm({k: t[k] * g[k] for k in g})
            perturbed = {k: params[k] + rho * t[k] ** 2 * g[k] / norm for k in params}
            descent = numpy_grad(perturbed, x, y)
            scale = np_norm(g) / np_norm(descent) if renormalize else 1.0
            total = {k: total[k] + scale * descent[k] for k in total}
        params = {k: params[k] - LEARNING_RATE * total[k] / (BATCH_SIZE // m) for k in params}
        history.append(params)
    return history


def run_m_sharpness(tx, params, batch, m, step_fn=jax.jit) -> list[dict]:
    sub_batches = optim.split_into_sub_batches(jax.tree.map(jnp.asarray, batch), m)
    per_sub_batch_grad = jax.vmap(jax.grad(loss), in_axes=(None, 0))
    stacked_grad_fn = lambda stacked: jax.vmap(jax.grad(loss))(stacked, sub_batches)

    return run_steps(tx, params, lambda p: per_sub_batch_grad(p, sub_batches), stacked_grad_fn, NUM_STEPS, step_fn)


class MSharpnessTest(chex.TestCase):
    @parameterized.named_parameters(
        ("m1_sam", 1, dict()),
        ("m4_sam", 4, dict()),
        ("m_batch_sam", BATCH_SIZE, dict()),
        ("m2_asam", 2, dict(adaptive=True, eta=0.05)),
        ("m4_ssam", 4, dict(renormalize=True)),
    )
    def test_matches_numpy_reference(self, m, kwargs):
        params, batch = make_problem()
        rho = 0.3
        tx = optim.m_sharpness_sam(optax.sgd(LEARNING_RATE), rho, **kwargs)
        expected = numpy_m_sharpness(params, batch, m, rho, **kwargs)
        chex.assert_trees_all_close(run_m_sharpness(tx, params, batch, m), expected, rtol=1e-10, atol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_variants_agree_with_reference(self):
        params, batch = make_problem(3)
        tx = optim.m_sharpness_sam(optax.sgd(LEARNING_RATE), 0.3, adaptive=True, eta=0.1, renormalize=True)
        ours = run_m_sharpness(tx, params, batch, 4, step_fn=self.variant)
        expected = numpy_m_sharpness(params, batch, 4, 0.3, adaptive=True, eta=0.1, renormalize=True)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)

    def test_whole_batch_equals_sam(self):
        params, batch = make_problem(1)
        base = optax.sgd(LEARNING_RATE, momentum=0.9)
        ours = run_m_sharpness(optim.m_sharpness_sam(base, 0.2, renormalize=True), params, batch, BATCH_SIZE)
        grad_fn = jax.grad(lambda p: loss(p, batch))
        tx = optim.sam(base, 0.2, renormalize=True)
        state, sam_params = tx.init(params), params
        for expected in ours:
            updates, state = tx.update(grad_fn(sam_params), state, sam_params, grad_fn=grad_fn)
            sam_params = optax.apply_updates(sam_params, updates)
            chex.assert_trees_all_close(sam_params, expected, rtol=1e-10, atol=1e-12)

    def test_step_compiles_once(self):
        params, batch = make_problem(2)
        tx = optim.m_sharpness_sam(optax.sgd(LEARNING_RATE), 0.1)
        chex.clear_trace_counter()
        run_m_sharpness(tx, params, batch, 2, step_fn=lambda step: jax.jit(chex.assert_max_traces(step, n=1)))

    def test_split_into_sub_batches(self):
        batch = {"image": jnp.arange(24.0).reshape(6, 2, 2), "label": jnp.arange(6)}
        sub_batches = optim.split_into_sub_batches(batch, 2)
        chex.assert_shape(sub_batches["image"], (3, 2, 2, 2))
        np.testing.assert_array_equal(sub_batches["label"], [[0, 1], [2, 3], [4, 5]])
        np.testing.assert_array_equal(sub_batches["image"][1, 0], batch["image"][2])

    def test_invalid_arguments_raise(self):
        batch = {"image": jnp.zeros((6, 2)), "label": jnp.zeros(6)}
        with self.assertRaisesRegex(ValueError, "must be a positive divisor of the batch size 6"):
            optim.split_into_sub_batches(batch, 4)
        with self.assertRaisesRegex(ValueError, "positive divisor"):
            optim.split_into_sub_batches(batch, 0)
        with self.assertRaisesRegex(ValueError, "same leading size"):
            optim.split_into_sub_batches({"image": jnp.zeros((6, 2)), "label": jnp.zeros(4)}, 2)
        with self.assertRaisesRegex(ValueError, "rho must be >= 0"):
            optim.m_sharpness_sam(optax.sgd(0.1), -1.0)
