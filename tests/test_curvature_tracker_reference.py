"""The curvature tracker against the ``sam_jax.curvature`` functions it wraps, in float64.

Lanczos runs as many steps as the model has parameters, so every call finds the extreme
eigenvalues exactly whatever its starting vector; the tracker and the direct calls then agree to
rounding. The perturbed point is built with ``sam_jax.optim.ascent_perturbation``, as in SAM.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax import curvature
from sam_jax.losses import cross_entropy
from sam_jax.optim import ascent_perturbation
from sam_jax.training.hooks import default_curvature_config, make_curvature_tracker

pytestmark = pytest.mark.usefixtures("float64")

NUM_EXAMPLES = 12
NUM_CLASSES = 3
RHO = 0.3


class TinyBNMLP(nn.Module):
    """dense(4) -> BatchNorm -> tanh -> dense(3), all float64 (39 parameters)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.0, **f64)(nn.Dense(4, **f64)(x))
        return nn.Dense(NUM_CLASSES, **f64)(jnp.tanh(x))


@pytest.fixture(scope="module")
def problem(float64):
    key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    images = 1.0 + jax.random.normal(key_x, (NUM_EXAMPLES, 3), jnp.float64)
    labels = jax.random.randint(key_y, (NUM_EXAMPLES,), 0, NUM_CLASSES)
    model = TinyBNMLP()
    variables = model.init(key_p, images)
    _, model_state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    params = variables["params"]
    num_params = ravel_pytree(params)[0].size

    def model_apply(p, state, x):
        return model.apply({"params": p, **state}, x)

    config = default_curvature_config()
    config.quantities = "hessian,gauss_newton,hessian_min,batch_sharpness"
    config.num_iters = num_params
    config.subset_size = 0
    tracker = make_curvature_tracker(config, model_apply, cross_entropy, batch_size=NUM_EXAMPLES, perturbation_rho=RHO)
    return dict(
        tracker=tracker,
        model_apply=model_apply,
        params=params,
        model_state=model_state,
        images=images,
        labels=labels,
        num_params=num_params,
    )


def test_tracker_equals_the_curvature_functions_it_wraps(problem):
    params, state, num_iters = problem["params"], problem["model_state"], problem["num_params"]
    batch = {"image": problem["images"], "label": problem["labels"]}

    def apply_fn(p, x):
        return problem["model_apply"](p, state, x)

    def loss_fn(p, b):
        return cross_entropy(apply_fn(p, b["image"]), b["label"])

    @jax.jit  # one compilation for all five direct calls
    def direct(params):
        perturbed = optax.apply_updates(params, ascent_perturbation(jax.grad(loss_fn)(params, batch), params, RHO))
        return {
            "hessian_top1": curvature.hessian_sharpness(loss_fn, params, batch, num_iters=num_iters)[0],
            "gauss_newton_top1": curvature.gauss_newton_sharpness(apply_fn, params, batch, num_iters=num_iters)[0],
            # The tracker's one mini-batch of ``batch_size`` examples is the whole subset.
            "batch_sharpness": curvature.batch_sharpness(loss_fn, params, jax.tree.map(lambda a: a[None], batch)),
            "kappa_min_theta": curvature.hessian_sharpness(
                loss_fn, params, batch, num_iters=num_iters, which="smallest"
            )[0],
            "kappa_min_perturbed": curvature.hessian_sharpness(
                loss_fn, perturbed, batch, num_iters=num_iters, which="smallest"
            )[0],
        }

    expected = direct(params)
    metrics = problem["tracker"](params, state, problem["images"], problem["labels"], jax.random.PRNGKey(7))
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[f"curvature/{name}"], float(value), rtol=1e-8, atol=1e-10, err_msg=name)
    assert metrics["curvature/kappa_min_perturbed"] != pytest.approx(metrics["curvature/kappa_min_theta"])


def test_zero_gradient_gives_finite_kappa(problem):
    # All-zero weights give zero logits; with balanced labels every gradient entry is zero.
    params = jax.tree.map(jnp.zeros_like, problem["params"])
    labels = jnp.arange(NUM_EXAMPLES) % NUM_CLASSES
    metrics = problem["tracker"](params, problem["model_state"], problem["images"], labels, jax.random.PRNGKey(7))
    assert metrics["curvature/kappa_min_bound"] == 0.0
    for name in ("kappa_min_theta", "kappa_min_perturbed", "kappa_min_bound"):
        assert np.isfinite(metrics[f"curvature/{name}"]), name
    # A zero gradient leaves the SAM point at theta (the old ``g / ||g||`` gave NaN here).
    assert metrics["curvature/kappa_min_perturbed"] == pytest.approx(metrics["curvature/kappa_min_theta"], abs=1e-12)
