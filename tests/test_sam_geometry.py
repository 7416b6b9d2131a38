"""The Figure 2 tracker of Tan et al. (2025, arXiv:2505.23866) against dense float64 references.

The model is a two-layer tanh MLP written as a function of a params pytree (31 parameters), with
a non-trainable ``model_state`` shift. Lanczos runs as many steps as there are parameters, so the
smallest eigenvalues match ``numpy.linalg.eigvalsh`` of the dense Hessian to rounding; the SAM
point is built in numpy from the dense gradient. The per-example ``lambda`` statistics are checked
against a plain loop over the examples, including the finiteness filter: the radius is large
enough that eq. (2)'s denominator is negative at one of them. The ``p_y = 1`` and ``0 / 0`` cases
of the filter are checked on hand-made values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax.losses import cross_entropy
from sam_jax.training.hooks import make_sam_geometry_tracker
from sam_jax.training.hooks.sam_geometry import finite_coefficients

pytestmark = pytest.mark.usefixtures("float64")

NUM_EXAMPLES = 16
PER_EXAMPLE = 12
NUM_CLASSES = 3
RHO = 1.0
PATH_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def mlp_apply(params, model_state, x):
    """``dense(4) -> + shift -> tanh -> dense(3)``; ``model_state["shift"]`` is not trained."""
    hidden = jnp.tanh(x @ params["w1"] + params["b1"] + model_state["shift"])
    return hidden @ params["w2"] + params["b2"]


@pytest.fixture(scope="module")
def problem(float64):
    keys = jax.random.split(jax.random.PRNGKey(1), 6)
    params = {
        "w1": jax.random.normal(keys[0], (3, 4), jnp.float64),
        "b1": 0.1 * jax.random.normal(keys[1], (4,), jnp.float64),
        "w2": 3.0 * jax.random.normal(keys[2], (4, NUM_CLASSES), jnp.float64),
        "b2": jnp.zeros((NUM_CLASSES,), jnp.float64),
    }
    return dict(
        params=params,
        model_state={"shift": 0.2 * jax.random.normal(keys[3], (4,), jnp.float64)},
        images=3.0 * jax.random.normal(keys[4], (NUM_EXAMPLES, 3), jnp.float64),
        labels=jax.random.randint(keys[5], (NUM_EXAMPLES,), 0, NUM_CLASSES),
        num_params=ravel_pytree(params)[0].size,
    )


def numpy_reference(problem):
    """Every tracked quantity from dense float64 derivatives and a loop over the examples."""
    params, state, images, labels = problem["params"], problem["model_state"], problem["images"], problem["labels"]
    flat, unravel = ravel_pytree(params)

    def batch_loss(theta):
        return cross_entropy(mlp_apply(unravel(theta), state, images), labels)

    theta = np.asarray(flat)
    grad = np.asarray(jax.grad(batch_loss)(flat))
    perturbed = theta + RHO * grad / np.linalg.norm(grad)
    hessian = jax.jit(jax.hessian(batch_loss))
    expected = {
        f"sam_geometry/kappa_min_t{t}": np.linalg.eigvalsh(np.asarray(hessian(theta + t * (perturbed - theta))))[0]
        for t in PATH_POINTS
    }
    expected["sam_geometry/kappa_min_bound"] = -np.linalg.norm(grad) / RHO

    @jax.jit
    def example_grad(theta, x, y):
        return jax.grad(lambda th: cross_entropy(mlp_apply(unravel(th), state, x[None]), y[None]))(theta)

    @jax.jit
    def true_class_probability(theta, x, y):
        return jax.nn.softmax(mlp_apply(unravel(theta), state, x))[y]

    lams, lam0s = [], []
    for x, y in zip(images[:PER_EXAMPLE], labels[:PER_EXAMPLE]):
        g = np.asarray(example_grad(flat, x, y))
        norm = np.linalg.norm(g)
        theta_z = theta + (RHO * g / norm if norm > 0 else 0.0)
        p_y = float(true_class_probability(flat, x, y))
        p_tilde_y = float(true_class_probability(theta_z, x, y))
        denominator = 1.0 - np.exp(RHO * norm / 2) * p_tilde_y
        if p_y < 1.0 and denominator > 0:
            lams.append((1.0 - p_tilde_y) / (1.0 - p_y))
            lam0s.append((1.0 - p_tilde_y) / denominator)
    expected.update(
        {
            "sam_geometry/lambda_mean": np.mean(lams),
            "sam_geometry/lambda_median": np.median(lams),
            "sam_geometry/lambda0_mean": np.mean(lam0s),
            "sam_geometry/lambda0_median": np.median(lam0s),
            "sam_geometry/lambda_fraction_finite": len(lams) / PER_EXAMPLE,
        }
    )
    return expected


@pytest.fixture(scope="module")
def metrics_and_reference(problem):
    tracker = make_sam_geometry_tracker(
        mlp_apply,
        cross_entropy,
        RHO,
        path_points=PATH_POINTS,
        num_iters=problem["num_params"],
        per_example=PER_EXAMPLE,
    )
    metrics = tracker(
        problem["params"], problem["model_state"], problem["images"], problem["labels"], jax.random.PRNGKey(3)
    )
    return metrics, numpy_reference(problem)


def test_metric_keys_and_types(metrics_and_reference):
    metrics, expected = metrics_and_reference
    assert sorted(metrics) == sorted(expected)
    assert "sam_geometry/kappa_min_t0.5" in metrics
    assert all(type(value) is float for value in metrics.values())


def test_kappa_min_along_the_path_matches_dense_eigvalsh(metrics_and_reference):
    metrics, expected = metrics_and_reference
    for t in PATH_POINTS:
        name = f"sam_geometry/kappa_min_t{t}"
        np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-6, err_msg=name)
    # The path moves the curvature: the two endpoints differ.
    assert metrics["sam_geometry/kappa_min_t0.0"] != pytest.approx(metrics["sam_geometry/kappa_min_t1.0"], rel=1e-3)


def test_kappa_min_bound(metrics_and_reference):
    metrics, expected = metrics_and_reference
    name = "sam_geometry/kappa_min_bound"
    np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-12)


def test_entropy_coefficients_match_a_loop_over_examples(metrics_and_reference):
    metrics, expected = metrics_and_reference
    for stat in ("lambda_mean", "lambda_median", "lambda0_mean", "lambda0_median", "lambda_fraction_finite"):
        name = f"sam_geometry/{stat}"
        np.testing.assert_allclose(metrics[name], expected[name], rtol=1e-10, err_msg=name)
    # The filter is exercised: eq. (2)'s denominator is negative at one example (11 of 12 kept).
    assert 0.5 <= metrics["sam_geometry/lambda_fraction_finite"] < 1.0


def test_finite_coefficients_keeps_finite_lambda_and_positive_lambda0():
    inf, nan = np.inf, np.nan
    # p_y = 1 (lambda = inf or 0/0); eq. (2)'s denominator zero (+-inf), negative, or -0 (p~_y = 1).
    lam = jnp.array([1.5, inf, nan, 2.0, 2.0, 2.0, 2.0, 0.5])
    lam0 = jnp.array([1.2, 1.1, nan, inf, -inf, -3.0, -0.0, 0.4])
    expected = [True, False, False, False, False, False, False, True]
    np.testing.assert_array_equal(finite_coefficients(lam, lam0), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rho=0.0), "rho=0.0 must be > 0"),
        (dict(rho=-0.1), "rho=-0.1 must be > 0"),
        (dict(path_points=()), "path_points is empty"),
        (dict(path_points=(0.0, 1.5)), "must lie in \\[0, 1\\]"),
        (dict(path_points=(0.5, 0.5)), "repeated"),
        (dict(per_example=0), "per_example=0 must be >= 1"),
        (dict(num_iters=0), "num_iters=0 must be >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    arguments = dict(rho=0.05) | kwargs
    with pytest.raises(ValueError, match=message):
        make_sam_geometry_tracker(mlp_apply, cross_entropy, arguments.pop("rho"), **arguments)
