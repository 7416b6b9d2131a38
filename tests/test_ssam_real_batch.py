"""SSAM's descent step has the ascent step's gradient norm on a real batch; SAM's does not.

Stable SAM (Tan et al. 2024, arXiv:2401.07250, Algorithm 1) rescales the gradient taken at the
perturbed point ``w + rho g / ||g||`` to the norm ``||g||`` of the gradient at ``w``. Here the batch
is 128 real images (scikit-learn's digits, standardised) and the model a Flax tanh MLP (64-32-10,
float64); the step is that of ``sam_jax.optim.sam`` around ``optax.sgd(1)``, so that the update is
minus the descent gradient. Everything is checked against a NumPy float64 forward and backward pass
written from the definitions (no JAX in the reference).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax import optim
from sam_jax.data import load_dataset
from sam_jax.losses import cross_entropy
from sam_jax.models import create_model

pytestmark = pytest.mark.usefixtures("float64")

BATCH_SIZE = 128
RHOS = (0.05, 0.2, 1.0)


@pytest.fixture(scope="module")
def problem(float64):
    """The first 128 digits of the train split (standardised with the split's statistics) and a tanh MLP."""
    train = load_dataset("digits", "train")
    images = train.images.reshape(len(train.labels), -1).astype(np.float64)
    images = (images - images.mean(axis=0)) / (images.std(axis=0) + 1e-8)
    x, y = images[:BATCH_SIZE], train.labels[:BATCH_SIZE]
    model = create_model("mlp", 10, widths=(32,), activation="tanh", dtype=jnp.float64)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:1]))["params"]
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)

    def loss(p):
        return cross_entropy(model.apply({"params": p}, jnp.asarray(x)), jnp.asarray(y))

    numpy_params = {
        "w1": np.asarray(params["Dense_0"]["kernel"]),
        "b1": np.asarray(params["Dense_0"]["bias"]),
        "w2": np.asarray(params["Dense_1"]["kernel"]),
        "b2": np.asarray(params["Dense_1"]["bias"]),
    }
    return dict(x=x, y=y, params=params, loss=loss, numpy_params=numpy_params)


def numpy_grad(p: dict, x: np.ndarray, y: np.ndarray) -> dict:
    """Gradient of the mean softmax cross-entropy of ``tanh(x w1 + b1) w2 + b2``, by hand."""
    hidden = np.tanh(x @ p["w1"] + p["b1"])
    logits = hidden @ p["w2"] + p["b2"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    dlogits = probs.copy()
    dlogits[np.arange(len(y)), y] -= 1.0
    dlogits /= len(y)
    dhidden = (dlogits @ p["w2"].T) * (1.0 - hidden**2)
    return {"w1": x.T @ dhidden, "b1": dhidden.sum(0), "w2": hidden.T @ dlogits, "b2": dlogits.sum(0)}


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def numpy_descent(p: dict, x: np.ndarray, y: np.ndarray, rho: float) -> tuple[dict, dict]:
    """``(g, grad L(w + rho g / ||g||))`` in NumPy."""
    g = numpy_grad(p, x, y)
    perturbed = {k: p[k] + rho * g[k] / np_norm(g) for k in p}
    return g, numpy_grad(perturbed, x, y)


def descent_step(problem, rho: float, renormalize: bool) -> np.ndarray:
    """Minus the update of one SAM / SSAM step around ``optax.sgd(1)``: the gradient the base received."""
    tx = optim.sam(optax.sgd(1.0), rho, renormalize=renormalize)
    grad_fn = jax.grad(problem["loss"])
    params = problem["params"]
    updates, _ = jax.jit(lambda p: tx.update(grad_fn(p), tx.init(p), p, grad_fn=grad_fn))(params)
    return -np.asarray(ravel_pytree(updates)[0])


def flat(tree: dict) -> np.ndarray:
    """The NumPy tree in the order ``ravel_pytree`` flattens the Flax params (bias before kernel)."""
    return np.concatenate([tree[k].ravel() for k in ("b1", "w1", "b2", "w2")])


@pytest.mark.parametrize("rho", RHOS)
def test_ssam_descent_step_has_the_ascent_gradient_norm(problem, rho):
    g, descent = numpy_descent(problem["numpy_params"], problem["x"], problem["y"], rho)
    expected = flat(descent) * np_norm(g) / np_norm(descent)
    ours = descent_step(problem, rho, renormalize=True)
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ours), np_norm(g), rtol=1e-12)


@pytest.mark.parametrize("rho", RHOS)
def test_sam_descent_step_keeps_its_own_norm(problem, rho):
    g, descent = numpy_descent(problem["numpy_params"], problem["x"], problem["y"], rho)
    ours = descent_step(problem, rho, renormalize=False)
    np.testing.assert_allclose(ours, flat(descent), rtol=1e-9, atol=1e-12)
    ratio = np.linalg.norm(ours) / np_norm(g)
    # On this batch and initialisation the perturbed gradient is longer than the clean one: by the
    # NumPy reference, ||descent|| / ||g|| = 1.014, 1.054, 1.186 at rho = 0.05, 0.2, 1 (SSAM: 1).
    assert abs(ratio - 1.0) > 1e-2, ratio
    np.testing.assert_allclose(ratio, np_norm(descent) / np_norm(g), rtol=1e-12)


def test_ssam_and_sam_descend_in_the_same_direction(problem):
    sam_step = descent_step(problem, RHOS[1], renormalize=False)
    ssam_step = descent_step(problem, RHOS[1], renormalize=True)
    cosine = sam_step @ ssam_step / (np.linalg.norm(sam_step) * np.linalg.norm(ssam_step))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-12)
