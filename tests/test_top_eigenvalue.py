"""``top_eigenvalue``, the one route from a run and a state to its sharpness, against dense float64
matrices: the Hessian of the mean loss and the Gauss-Newton matrix ``sum_b J_b^T H_b J_b`` of a tiny
MLP, for cross-entropy and MSE, at the initial state and at a state moved away from it (where the
two matrices differ)."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax import data
from sam_jax.losses import get_loss
from sam_jax.training import RunData, build_run, default_config, top_eigenvalue

pytestmark = pytest.mark.usefixtures("float64")

NUM_TRAIN, NUM_FEATURES, NUM_CLASSES = 48, 5, 3


def _dataset(rng: np.random.Generator, n: int) -> data.ArrayDataset:
    images = rng.normal(size=(n, NUM_FEATURES))
    labels = np.argmax(images @ rng.normal(size=(NUM_FEATURES, NUM_CLASSES)), axis=1).astype(np.int32)
    return data.ArrayDataset(images, labels, NUM_CLASSES)


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(1)
    config = default_config()
    config.data.name = "digits"  # validated only; the data are passed to build_run
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict({"widths": (7,), "dtype": "float64"})
    config.batch_size = 16  # the tracker goes batch by batch: three batches here
    config.num_steps = 1
    config.progress_bar = False
    with jax.enable_x64(True):
        return build_run(
            config, RunData(_dataset(rng, NUM_TRAIN), _dataset(rng, 8), _dataset(rng, 8), NUM_CLASSES, None)
        )


def _dense_top(run, params: Any, loss_name: str, curvature: str) -> float:
    images, labels = jnp.asarray(run.data.train.images), jnp.asarray(run.data.train.labels)
    flat, unravel = ravel_pytree(jax.tree.map(lambda x: x.astype(jnp.float64), params))
    model_state = run.init_state.model_state
    loss = get_loss(loss_name)

    def logits(w):
        return run.eval_step(unravel(w), model_state, images)

    if curvature == "hessian":
        matrix = jax.hessian(lambda w: loss(logits(w), labels))(flat)
    else:
        jacobian = jax.jacobian(logits)(flat).reshape(-1, flat.size)  # [B K, P]
        out = logits(flat)
        out_hessian = jax.hessian(lambda z: loss(z, labels))(out).reshape(out.size, out.size)
        matrix = jacobian.T @ out_hessian @ jacobian
    return float(np.linalg.eigvalsh(np.asarray(matrix, np.float64))[-1])


@pytest.mark.parametrize(
    "curvature, loss_name, moved",
    [
        ("hessian", "cross_entropy", True),
        ("gauss_newton", "cross_entropy", False),  # lambda_0 of the curvature-calibration grids
        ("gauss_newton", "mse", True),
        ("hessian", "mse", False),
    ],
)
def test_top_eigenvalue_matches_the_dense_matrix(run, curvature, loss_name, moved):
    state = run.init_state
    if moved:  # away from the initialisation, where the Hessian and the GN matrix differ more
        noise = jax.tree.map(lambda x: 0.5 * jnp.cos(jnp.arange(x.size).reshape(x.shape) + 1.0), state.params)
        state = state._replace(params=jax.tree.map(jnp.add, state.params, noise))
    train = run.data.train
    estimate = top_eigenvalue(
        run, state, train.images, train.labels, curvature=curvature, loss=loss_name, num_iters=60, tolerance=1e-8
    )
    reference = _dense_top(run, state.params, loss_name, curvature)
    assert reference > 1e-3  # a real eigenvalue, not a vanishing one
    np.testing.assert_allclose(estimate, reference, rtol=1e-6)
    if moved:  # there the two matrices differ, so the test tells the quantities apart
        other = _dense_top(run, state.params, loss_name, ({"hessian", "gauss_newton"} - {curvature}).pop())
        assert abs(other - reference) > 1e-3 * reference
