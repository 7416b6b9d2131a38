"""The training-time curvature tracker and its config validation (the sharpness plot: test_figures.py)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from sam_jax.losses import cross_entropy
from sam_jax.training.hooks import default_curvature_config, make_curvature_tracker, validate_curvature_config

BATCH_SIZE = 8


class TinyBNConv(nn.Module):
    """conv3x3(4) -> BatchNorm -> relu -> global mean pool -> dense(3)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
        return nn.Dense(3)(nn.relu(x).mean(axis=(1, 2)))


@pytest.fixture(scope="module")
def setup():
    model = TinyBNConv()
    key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(0), 3)
    images = jax.random.normal(key_x, (24, 6, 6, 1))
    labels = jax.random.randint(key_y, (24,), 0, 3)
    variables = model.init(key_p, images)
    _, state = model.apply(variables, images, train=True, mutable=["batch_stats"])
    traces = []

    def model_apply(params, model_state, x):
        traces.append(None)
        return model.apply({"params": params, **model_state}, x)

    config = default_curvature_config()
    config.every = 10
    config.quantities = "hessian,gauss_newton,hessian_min,batch_sharpness,trace,density"
    config.top_k = 2
    config.num_iters = 10
    config.density_probes = 2
    config.density_iters = 6
    tracker = make_curvature_tracker(config, model_apply, cross_entropy, batch_size=BATCH_SIZE, perturbation_rho=0.05)
    return dict(tracker=tracker, params=variables["params"], state=state, images=images, labels=labels, traces=traces)


def test_tracker_returns_finite_values_for_every_quantity(setup):
    metrics = setup["tracker"](setup["params"], setup["state"], setup["images"], setup["labels"], jax.random.PRNGKey(1))
    expected = {
        f"curvature/{name}"
        for name in (
            "hessian_top1",
            "hessian_top2",
            "hessian_lanczos_steps",
            "hessian_relative_residual",
            "gauss_newton_top1",
            "gauss_newton_top2",
            "gauss_newton_lanczos_steps",
            "gauss_newton_relative_residual",
            "hessian_min",
            "batch_sharpness",
            "hessian_trace",
            "hessian_trace_stderr",
            "density_nodes",
            "density_weights",
            "kappa_min_theta",
            "kappa_min_perturbed",
            "kappa_min_bound",
        )
    }
    assert set(metrics) == expected
    for name, value in metrics.items():
        assert np.all(np.isfinite(value)), name
    assert metrics["curvature/hessian_top1"] >= metrics["curvature/hessian_top2"]
    assert metrics["curvature/gauss_newton_top2"] >= 0
    assert metrics["curvature/hessian_min"] == metrics["curvature/kappa_min_theta"]
    assert metrics["curvature/hessian_min"] <= metrics["curvature/hessian_top2"]
    assert metrics["curvature/kappa_min_bound"] < 0
    assert len(metrics["curvature/density_nodes"]) == 2 * 6
    np.testing.assert_allclose(sum(metrics["curvature/density_weights"]), 1.0, rtol=1e-5)


def test_tracker_compiles_once(setup):
    args = (setup["state"], setup["images"], setup["labels"])
    setup["tracker"](setup["params"], *args, jax.random.PRNGKey(2))
    traced = len(setup["traces"])
    shifted = jax.tree.map(lambda a: a * 1.1, setup["params"])
    setup["tracker"](shifted, *args, jax.random.PRNGKey(3))
    assert traced > 0 and len(setup["traces"]) == traced


def _warm_config(quantities: str, num_iters: int, tolerance: float, **fields):
    """A tracking config with warm starts, a tolerance, and ``fields`` set."""
    config = default_curvature_config()
    config.every = 1
    config.quantities = quantities
    config.num_iters = num_iters
    config.tolerance = tolerance
    config.warm_start = True
    config.update(fields)
    return config


def test_warm_started_tracking_converges_in_fewer_steps_and_matches_its_reference(setup):
    """A tolerance stops Lanczos early, a warm start from the previous point needs fewer steps,
    and the logged cold 3x-longer reference agrees with the tracked value to the tolerance."""
    config = _warm_config("hessian,gauss_newton", 30, 1e-4, reference_every=2)
    apply = lambda p, state, x: TinyBNConv().apply({"params": p, **state}, x)
    tracker = make_curvature_tracker(config, apply, cross_entropy, batch_size=BATCH_SIZE)
    args = (setup["state"], setup["images"], setup["labels"])
    nearby = jax.tree.map(lambda a: a * 1.001, setup["params"])
    cold = tracker(setup["params"], *args, jax.random.PRNGKey(4))
    warm = tracker(nearby, *args, jax.random.PRNGKey(5))
    for name in ("hessian", "gauss_newton"):
        assert cold[f"curvature/{name}_lanczos_steps"] < 30
        assert warm[f"curvature/{name}_lanczos_steps"] < cold[f"curvature/{name}_lanczos_steps"]
        assert cold[f"curvature/{name}_relative_residual"] <= 1e-4
        reference = cold[f"curvature/{name}_top1_reference"]
        assert abs(cold[f"curvature/{name}_top1"] - reference) <= 1e-4 * abs(reference)
        assert f"curvature/{name}_top1_reference" not in warm  # every second call only


def test_guard_vector_finds_an_eigenvalue_that_overtakes_the_top_one():
    """Between two tracking points the runner-up eigenvalue overtakes the top one (a quadratic loss
    with Hessian diag(10, 8, bulk), then diag(9.9, 10, bulk)). A warm start from the old top vector
    alone converges, residual within tolerance, to the old top direction's 9.9; carrying the
    guard vector into the start finds 10, converged to the tracking tolerance or a 10x looser one."""
    size = 400
    model = nn.Dense(1, use_bias=False)
    params = model.init(jax.random.PRNGKey(0), np.zeros((1, size)))["params"]
    bulk = np.linspace(4.0, 0.1, size - 2)

    def images(top):  # X^T X / n = diag(top, bulk): the Hessian of the loss below
        return np.diag(np.sqrt(size * np.concatenate([top, bulk]))).astype(np.float32)

    def loss(logits, labels, mask=None):
        return 0.5 * (logits**2).sum(axis=-1).mean()

    labels = np.zeros((size,), np.int32)
    found, steps = {}, {}
    for guard_vectors, guard_tolerance in ((0, 0.0), (1, 0.0), (1, 1e-2)):
        config = _warm_config("hessian", 40, 1e-3, guard_vectors=guard_vectors, guard_tolerance=guard_tolerance)
        tracker = make_curvature_tracker(
            config, lambda p, state, x: model.apply({"params": p}, x), loss, batch_size=BATCH_SIZE
        )
        first = tracker(params, {}, images([10.0, 8.0]), labels, jax.random.PRNGKey(1))
        np.testing.assert_allclose(first["curvature/hessian_top1"], 10.0, rtol=1e-3)
        second = tracker(params, {}, images([9.9, 10.0]), labels, jax.random.PRNGKey(2))
        assert second["curvature/hessian_relative_residual"] <= 1e-3
        found[guard_vectors, guard_tolerance] = second["curvature/hessian_top1"]
        steps[guard_vectors, guard_tolerance] = first["curvature/hessian_lanczos_steps"]
    np.testing.assert_allclose(found[0, 0.0], 9.9, rtol=1e-3)  # the failure the guard is there for
    np.testing.assert_allclose(found[1, 0.0], 10.0, rtol=1e-3)
    np.testing.assert_allclose(found[1, 1e-2], 10.0, rtol=1e-3)
    assert steps[1, 1e-2] < steps[1, 0.0]  # the looser guard stops the first (cold) run sooner


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("quantities", "hessian,curvature", "quantities"),
        ("quantities", "", "quantities"),
        ("top_k", 40, "num_iters"),
        ("trace_probes", 1, "trace_probes"),
        ("every", -1, "every"),
        ("tolerance", -0.1, "tolerance"),
        ("reference_every", -1, "reference_every"),
        ("guard_vectors", -1, "guard_vectors"),
        ("guard_tolerance", -1e-3, "guard_tolerance"),
    ],
)
def test_config_validation(field, value, match):
    config = default_curvature_config()
    config[field] = value
    with pytest.raises(ValueError, match=match):
        validate_curvature_config(config)


def test_config_rejects_unknown_field_and_small_subset():
    config = default_curvature_config()
    config.unlocked = True
    with pytest.raises(ValueError, match="unlocked"):
        validate_curvature_config(config)
    config = default_curvature_config()
    config.subset_size = 4
    with pytest.raises(ValueError, match="subset_size"):
        make_curvature_tracker(config, None, cross_entropy, batch_size=BATCH_SIZE)
    assert validate_curvature_config(default_curvature_config()) == ("hessian", "gauss_newton", "batch_sharpness")
    config = default_curvature_config()
    config.num_iters, config.top_k, config.warm_start = 2, 2, True
    with pytest.raises(ValueError, match="guard_vectors"):
        validate_curvature_config(config)
    config.warm_start = False  # the guard applies to warm starts only
    validate_curvature_config(config)
