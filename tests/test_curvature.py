"""Curvature engine against dense float64 references (jax.hessian, explicit Jacobians, numpy eigh)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from sam_jax import curvature
from sam_jax.losses import cross_entropy, mse
from sam_jax.models import MLP

NUM_CLASSES = 3


pytestmark = pytest.mark.usefixtures("float64")


class TinyBNConv(nn.Module):
    """conv3x3(5) -> BatchNorm -> tanh -> global mean pool -> dense, all float64."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64)
        x = nn.Conv(5, (3, 3), **f64)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.0, **f64)(x)
        x = jnp.tanh(x).mean(axis=(1, 2))
        return nn.Dense(NUM_CLASSES, **f64)(x)


def _mlp_problem():
    """A 6-10-3 tanh MLP (103 parameters) on 16 random examples."""
    key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(key_x, (16, 6), jnp.float64)
    y = jax.random.randint(key_y, (16,), 0, NUM_CLASSES)
    model = MLP(num_classes=NUM_CLASSES, widths=(10,), dtype=jnp.float64)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(key_p, x)["params"])
    return (lambda p, inputs: model.apply({"params": p}, inputs)), params, {"image": x, "label": y}


def _conv_problem():
    """TinyBNConv (83 parameters) in inference mode, with non-trivial running statistics."""
    key_x, key_y, key_p = jax.random.split(jax.random.PRNGKey(2), 3)
    x = 1.0 + jax.random.normal(key_x, (8, 5, 5, 1), jnp.float64)
    y = jax.random.randint(key_y, (8,), 0, NUM_CLASSES)
    model = TinyBNConv()
    variables = model.init(key_p, x)
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats"])

    def apply_fn(p, inputs):
        return model.apply({"params": p, **state}, inputs)

    return apply_fn, variables["params"], {"image": x, "label": y}


PROBLEMS = {"mlp": _mlp_problem, "bn_conv": _conv_problem}


@pytest.fixture(scope="module", params=sorted(PROBLEMS))
def problem(request, float64):
    apply_fn, params, batch = PROBLEMS[request.param]()
    flat, unravel = ravel_pytree(params)
    assert flat.size > 30  # more parameters than Lanczos steps, or the tests prove nothing

    def loss_fn(p, b):
        return cross_entropy(apply_fn(p, b["image"]), b["label"])

    hessian = np.asarray(jax.jit(jax.hessian(lambda t: loss_fn(unravel(t), batch)))(flat))
    return dict(
        apply_fn=apply_fn,
        params=params,
        batch=batch,
        flat=np.asarray(flat),
        unravel=unravel,
        loss_fn=loss_fn,
        hessian=hessian,
    )


def _dense_gauss_newton(apply_fn, params, batch, loss):
    """sum_b J_b^T H_b J_b with explicit Jacobians and the closed-form output Hessians."""
    flat, unravel = ravel_pytree(params)
    logits = np.asarray(apply_fn(params, batch["image"]))
    jac = np.asarray(jax.jit(jax.jacfwd(lambda t: apply_fn(unravel(t), batch["image"])))(flat))
    num = logits.shape[0]
    if loss == "mse":
        out_hessians = np.broadcast_to(np.eye(NUM_CLASSES), (num, NUM_CLASSES, NUM_CLASSES)) / num
    else:
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out_hessians = (np.einsum("bi,ij->bij", p, np.eye(NUM_CLASSES)) - np.einsum("bi,bj->bij", p, p)) / num
    return np.einsum("bkn,bkl,blm->nm", jac, out_hessians, jac)


def _relative(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b))


def _random_direction(problem, seed=0):
    v = np.random.default_rng(seed).standard_normal(problem["flat"].size)
    return v, problem["unravel"](jnp.asarray(v))


def test_hvp_matches_dense_hessian(problem):
    v, v_tree = _random_direction(problem)
    loss = lambda p: problem["loss_fn"](p, problem["batch"])
    product = jax.jit(curvature.hvp, static_argnums=0)(loss, problem["params"], v_tree)
    assert _relative(ravel_pytree(product)[0], problem["hessian"] @ v) < 1e-10
    operator_product = jax.jit(lambda p, u: curvature.hessian_operator(loss, p)(u))
    product = operator_product(problem["params"], v_tree)
    assert _relative(ravel_pytree(product)[0], problem["hessian"] @ v) < 1e-10


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse"])
def test_gnvp_matches_dense_gauss_newton(problem, loss_name):
    loss = {"cross_entropy": cross_entropy, "mse": mse}[loss_name]
    dense = _dense_gauss_newton(problem["apply_fn"], problem["params"], problem["batch"], loss_name)
    v, v_tree = _random_direction(problem, seed=1)
    product = jax.jit(curvature.gnvp, static_argnums=(0, 1))(
        problem["apply_fn"], loss, problem["params"], problem["batch"], v_tree
    )
    assert _relative(ravel_pytree(product)[0], dense @ v) < 1e-10
    eigs = np.linalg.eigvalsh(dense)
    assert eigs.min() > -1e-12 * eigs.max()  # PSD up to rounding


def test_top_hessian_eigenpairs(problem):
    @jax.jit
    def top_five(params):
        matvec = curvature.hessian_operator(lambda p: problem["loss_fn"](p, problem["batch"]), params)
        return curvature.eigenvalues(matvec, params, k=5, num_iters=30)

    values, vectors = top_five(problem["params"])
    reference = np.linalg.eigvalsh(problem["hessian"])[::-1][:5]
    np.testing.assert_allclose(values[0], reference[0], rtol=1e-6)
    np.testing.assert_allclose(values, reference, rtol=1e-6)
    flat_vectors = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(vectors))
    np.testing.assert_allclose(flat_vectors @ flat_vectors.T, np.eye(5), atol=1e-12)
    residual = flat_vectors @ problem["hessian"] - np.asarray(values)[:, None] * flat_vectors
    assert np.abs(residual).max() < 1e-3 * abs(float(values[0]))


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_tolerance_stops_early_with_bounding_residual_norms(problem, which):
    hessian = problem["hessian"]
    spectrum = np.linalg.eigvalsh(hessian)
    matvec = lambda v: problem["unravel"](jnp.asarray(hessian) @ ravel_pytree(v)[0])

    @jax.jit
    def run(params):
        return curvature.ritz_pairs(matvec, params, k=2, num_iters=60, which=which, tol=1e-7)

    pairs = run(problem["params"])
    reference = spectrum[::-1][:2] if which == "largest" else spectrum[:2]
    steps = int(pairs.num_steps)
    assert 2 <= steps < 60  # stopped early, at a size where the pairs have converged
    errors = np.abs(np.asarray(pairs.values) - reference)
    assert np.all(errors <= 1e-7 * np.abs(reference) * 1.01 + 1e-12)
    # residual_norms is ||A y - theta y|| computed from T, and it bounds the eigenvalue error.
    flat_vectors = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(pairs.vectors))
    residuals = np.linalg.norm(flat_vectors @ hessian - np.asarray(pairs.values)[:, None] * flat_vectors, axis=1)
    np.testing.assert_allclose(pairs.residual_norms, residuals, rtol=1e-4, atol=1e-10)
    assert np.all(errors <= np.asarray(pairs.residual_norms) * (1 + 1e-6) + 1e-12)
    # The same start without a tolerance takes every step and agrees.
    full = jax.jit(lambda p: curvature.ritz_pairs(matvec, p, k=2, num_iters=60, which=which))(problem["params"])
    assert int(full.num_steps) == 60
    np.testing.assert_allclose(full.values, reference, rtol=1e-9)


def test_per_pair_tolerances_stop_when_each_pair_meets_its_own(problem):
    hessian = problem["hessian"]
    matvec = lambda v: problem["unravel"](jnp.asarray(hessian) @ ravel_pytree(v)[0])

    def run(tol):
        return jax.jit(lambda p: curvature.ritz_pairs(matvec, p, k=2, num_iters=60, tol=tol))(problem["params"])

    strict, loose_second, loose = run(1e-7), run((1e-7, 1e-2)), run(1e-2)
    # The second pair's looser tolerance saves steps; the first one's strict one still costs some.
    assert int(loose.num_steps) <= int(loose_second.num_steps) < int(strict.num_steps) < 60
    values, bounds = np.asarray(loose_second.values), np.asarray(loose_second.residual_norms)
    assert bounds[0] <= 1e-7 * abs(values[0]) and bounds[1] <= 1e-2 * abs(values[1])
    reference = np.linalg.eigvalsh(hessian)[::-1][:2]
    assert np.all(np.abs(values - reference) <= bounds * (1 + 1e-6) + 1e-12)


def test_warm_start_from_a_nearby_operator_takes_fewer_steps(problem):
    hessian = problem["hessian"]
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(hessian.shape)
    nearby = hessian + 1e-3 * np.abs(np.linalg.eigvalsh(hessian)).max() * (noise + noise.T) / 2

    def pairs(matrix, v0):
        matvec = lambda v: problem["unravel"](jnp.asarray(matrix) @ ravel_pytree(v)[0])
        return curvature.ritz_pairs(matvec, problem["params"], k=1, num_iters=60, tol=1e-6, v0=v0)

    previous = pairs(nearby, None)
    zeros = jax.tree.map(jnp.zeros_like, problem["params"])
    cold = pairs(hessian, zeros)  # an all-zero start falls back to the random one
    warm = pairs(hessian, jax.tree.map(lambda v: v[0], previous.vectors))
    top = np.linalg.eigvalsh(hessian)[-1]
    np.testing.assert_allclose(cold.values[0], top, rtol=2e-6)
    np.testing.assert_allclose(warm.values[0], top, rtol=2e-6)
    assert int(warm.num_steps) < int(cold.num_steps)


def test_eigenvalues_of_a_scalar_loss_mean_its_hessian(problem):
    loss = lambda p: problem["loss_fn"](p, problem["batch"])
    values, _ = jax.jit(lambda p: curvature.eigenvalues(loss, p, k=5, num_iters=30))(problem["params"])
    reference = np.linalg.eigvalsh(problem["hessian"])[::-1][:5]
    np.testing.assert_allclose(values, reference, rtol=1e-6)


def test_smallest_hessian_eigenvalue(problem):
    value = jax.jit(lambda p, b: curvature.hessian_sharpness(problem["loss_fn"], p, b, num_iters=30, which="smallest"))(
        problem["params"], problem["batch"]
    )
    reference = np.linalg.eigvalsh(problem["hessian"])
    np.testing.assert_allclose(value[0], reference[0], rtol=1e-6)
    assert reference[0] < 0  # a non-convex point, so "smallest" is not the same as "closest to 0"


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse"])
def test_top_gauss_newton_eigenvalues(problem, loss_name):
    loss = {"cross_entropy": cross_entropy, "mse": mse}[loss_name]
    dense = _dense_gauss_newton(problem["apply_fn"], problem["params"], problem["batch"], loss_name)
    values = jax.jit(
        lambda p, b: curvature.gauss_newton_sharpness(
            problem["apply_fn"], p, b, loss_from_logits=loss, k=5, num_iters=30
        )
    )(problem["params"], problem["batch"])
    reference = np.linalg.eigvalsh(dense)[::-1][:5]
    np.testing.assert_allclose(values[0], reference[0], rtol=1e-6)
    np.testing.assert_allclose(values, reference, rtol=1e-6)


def test_gauss_newton_equals_hessian_for_linear_model_with_mse(float64):
    model = nn.Dense(NUM_CLASSES, dtype=jnp.float64, param_dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(3), (12, 7), jnp.float64)
    batch = {"image": x, "label": jnp.arange(12) % NUM_CLASSES}
    params = model.init(jax.random.PRNGKey(4), x)["params"]
    flat, unravel = ravel_pytree(params)

    def apply_fn(p, inputs):
        return model.apply({"params": p}, inputs)

    columns = jax.jit(jax.vmap(lambda e: ravel_pytree(curvature.gnvp(apply_fn, mse, params, batch, unravel(e)))[0]))(
        jnp.eye(flat.size)
    )
    hessian = jax.jit(jax.hessian(lambda t: mse(apply_fn(unravel(t), x), batch["label"])))(flat)
    np.testing.assert_allclose(columns, hessian, atol=1e-12)


def test_batch_sharpness_matches_dense(problem):
    batch = problem["batch"]
    batches = jax.tree.map(lambda a: a.reshape((2, -1) + a.shape[1:]), batch)
    value = jax.jit(lambda p, b: curvature.batch_sharpness(problem["loss_fn"], p, b))(problem["params"], batches)
    loss = lambda t, b: problem["loss_fn"](problem["unravel"](t), b)
    grad_and_hessian = jax.jit(lambda t, b: (jax.grad(loss)(t, b), jax.hessian(loss)(t, b)))
    ratios = []
    for i in range(2):
        g, h = map(np.asarray, grad_and_hessian(problem["flat"], jax.tree.map(lambda a: a[i], batches)))
        ratios.append(g @ h @ g / (g @ g))
    np.testing.assert_allclose(value, np.mean(ratios), rtol=1e-10)


def test_hutchinson_trace_within_three_standard_errors(problem):
    estimate, stderr = jax.jit(lambda p, b: curvature.hessian_trace(problem["loss_fn"], p, b, num_probes=100))(
        problem["params"], problem["batch"]
    )
    exact = np.trace(problem["hessian"])
    assert 0 < stderr < abs(exact)
    assert abs(estimate - exact) < 3 * stderr


def test_lanczos_quadrature_is_exact_for_low_moments(problem):
    loss = lambda p: problem["loss_fn"](p, problem["batch"])
    matvec = curvature.hessian_operator(loss, problem["params"])
    v, v_tree = _random_direction(problem, seed=2)
    num_iters = 4
    result = jax.jit(curvature.lanczos, static_argnums=(0, 2))(matvec, v_tree, num_iters)
    nodes, coordinates = np.linalg.eigh(np.asarray(curvature.tridiagonal(result)))
    weights = coordinates[0] ** 2
    u = v / np.linalg.norm(v)
    for power in range(2 * num_iters):
        exact = u @ np.linalg.matrix_power(problem["hessian"], power) @ u
        np.testing.assert_allclose(weights @ nodes**power, exact, rtol=1e-9)


def test_spectral_density_normalised_and_moments_match(problem):
    density = jax.jit(lambda p, b: curvature.spectral_density(problem["loss_fn"], p, b, num_probes=20, num_iters=20))(
        problem["params"], problem["batch"]
    )
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.trapezoid(density.density, density.grid), 1.0, rtol=1e-6)
    eigs = np.linalg.eigvalsh(problem["hessian"])
    for power in (1, 2, 3):
        per_probe = np.sum(density.weights * density.nodes**power, axis=1)
        stderr = per_probe.std(ddof=1) / np.sqrt(per_probe.size)
        assert abs(per_probe.mean() - np.mean(eigs**power)) < 3 * stderr


def test_tracking_in_your_own_jit_compiles_once(float64):
    # The pattern of docs/curvature.md: the caller jits track(params, batch), which builds new
    # closures over the batch on every call; the library functions do not jit over callables.
    apply_fn, initial_params, initial_batch = _mlp_problem()

    def loss_fn(p, b):
        return cross_entropy(apply_fn(p, b["image"]), b["label"])

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def track(params, batch, key):
        hessian_keys = jax.random.split(key, 3)
        halves = jax.tree.map(lambda a: a.reshape((2, -1) + a.shape[1:]), batch)
        return {
            "hessian_top1": curvature.eigenvalues(
                lambda p: loss_fn(p, batch), params, num_iters=5, key=hessian_keys[0]
            )[0][0],
            "hessian_min": curvature.hessian_sharpness(
                loss_fn, params, batch, num_iters=5, which="smallest", key=hessian_keys[1]
            )[0],
            "gauss_newton_top1": curvature.gauss_newton_sharpness(apply_fn, params, batch, num_iters=5)[0],
            "batch_sharpness": curvature.batch_sharpness(loss_fn, params, halves),
            "trace": curvature.hessian_trace(loss_fn, params, batch, num_probes=4, key=hessian_keys[2])[0],
            "density_nodes": curvature.spectral_density(loss_fn, params, batch, num_iters=5, grid_size=50).nodes,
        }

    rng = np.random.default_rng(5)
    for step in range(3):
        params = jax.tree.map(lambda a: a + 0.01 * step, initial_params)
        batch = dict(
            initial_batch, image=initial_batch["image"] + 0.1 * rng.standard_normal(initial_batch["image"].shape)
        )
        metrics = track(params, batch, jax.random.PRNGKey(step))
        chex.assert_tree_all_finite(metrics)


def test_eigenvalues_rejects_bad_arguments(problem):
    matvec = lambda v: v
    with pytest.raises(ValueError, match="num_iters"):
        curvature.eigenvalues(matvec, problem["params"], k=11, num_iters=10)
    with pytest.raises(ValueError, match="which"):
        curvature.eigenvalues(matvec, problem["params"], which="middle")
    with pytest.raises(ValueError, match="tol"):
        curvature.ritz_pairs(matvec, problem["params"], tol=-1.0)
    with pytest.raises(ValueError, match="tol"):
        curvature.ritz_pairs(matvec, problem["params"], k=2, tol=(1e-3, -1e-3))
    with pytest.raises(ValueError, match="for k=1"):
        curvature.ritz_pairs(matvec, problem["params"], tol=(1e-3, 1e-3))
