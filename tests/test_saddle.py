"""The saddle-escape study (``sam_jax.analysis.saddle``, ``experiments.ssam_saddle``) against hand computations.

The escape step is checked on hand-written loss sequences and on one gradient-descent step of the
quartic saddle worked out by hand; whole trajectories of GD, SAM and SSAM (with gradient noise) are
checked against NumPy float64 loops written from the update rules; the linear network's saddle at 0
against its known Hessian spectrum ``+-sigma_i(A)``; the driver on its ``quick`` preset.
"""

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from experiments import ssam_saddle
from experiments.configs.ssam_saddle import get_config
from sam_jax import optim
from sam_jax.analysis.saddle import (
    escape_step,
    escape_threshold,
    gradient_noise,
    linear_network,
    quartic_saddle,
    simulate,
)

pytestmark = pytest.mark.usefixtures("float64")

SINGULAR_VALUES = (2.0, 1.0, 0.5)


def test_escape_step_is_the_first_step_below_the_threshold():
    losses = jnp.array([0.0, -0.1, -0.3, -0.2, -0.4])
    assert int(escape_step(losses, -0.25)) == 2  # -0.3 at index 2 is the first value below
    assert int(escape_step(losses, 0.5)) == 0  # already below at the start
    assert int(escape_step(losses, -0.4)) == -1  # strictly below: -0.4 does not count
    batched = jnp.stack([losses, -losses])
    np.testing.assert_array_equal(escape_step(batched, -0.25), [2, -1])


def test_escape_threshold_is_the_fraction_of_the_drop():
    assert escape_threshold(quartic_saddle()) == -0.125
    # ||diag(2, 1, 0.5)||^2 / 2 = 2.625 at the saddle, 0 at the minimum.
    assert escape_threshold(linear_network(SINGULAR_VALUES, 3), 0.5) == pytest.approx(1.3125)
    assert escape_threshold(linear_network(SINGULAR_VALUES, 3), 0.9) == pytest.approx(0.2625)


def run(problem, tx, start, num_steps, noise_std=0.0, key=0):
    return simulate(problem, tx, start, num_steps, jnp.asarray(noise_std), jax.random.PRNGKey(key))


def test_one_gd_step_escapes_the_quartic_saddle_by_hand():
    # f(0, 0.5) = -0.125 + 0.015625 = -0.109375 > -0.125; with lr 0.5, y = 0.5 + 0.5 (0.5 - 0.125) = 0.6875
    # and f = -0.6875^2 / 2 + 0.6875^4 / 4 = -0.236328 + 0.055851 = -0.180477 < -0.125: escape after 1 step.
    problem = quartic_saddle()
    trajectory = run(problem, optax.sgd(0.5), jnp.array([0.0, 0.5]), 3)
    np.testing.assert_allclose(trajectory.losses[:2], [-0.109375, -0.180477], atol=1e-6)
    np.testing.assert_allclose(trajectory.coordinates[1], [0.0, 0.6875])
    assert int(escape_step(trajectory.losses, escape_threshold(problem))) == 1


def test_one_sam_and_ssam_step_near_the_quartic_saddle_by_hand():
    # At (0, 0.01): g = (0, -0.01 + 1e-6) = (0, -0.009999); with rho 0.1 the ascent point is
    # y' = 0.01 - 0.1 = -0.09, where the gradient is 0.09 - 0.000729 = 0.089271: SAM moves y to
    # 0.01 - 0.1 * 0.089271 = 0.0010729, towards the saddle; SSAM takes the same direction with
    # length 0.009999: y = 0.01 - 0.1 * 0.009999 = 0.0090001. GD moves away: 0.01 + 0.1 * 0.009999.
    problem, start = quartic_saddle(), jnp.array([0.0, 0.01])
    ys = {
        name: float(run(problem, tx, start, 1).coordinates[1, 1])
        for name, tx in (
            ("gd", optax.sgd(0.1)),
            ("sam", optim.sam(optax.sgd(0.1), 0.1)),
            ("ssam", optim.sam(optax.sgd(0.1), 0.1, renormalize=True)),
        )
    }
    np.testing.assert_allclose([ys["gd"], ys["sam"], ys["ssam"]], [0.0109999, 0.0010729, 0.0090001], rtol=1e-12)


def quartic_grad(w: np.ndarray) -> np.ndarray:
    return np.array([w[0], -w[1] + w[1] ** 3])


def quartic_loss(w: np.ndarray) -> float:
    return 0.5 * w[0] ** 2 - 0.5 * w[1] ** 2 + 0.25 * w[1] ** 4


def numpy_sam_path(grad, loss, start, lr, rho, renormalize, noises, momentum=0.0):
    """SAM / SSAM (rho > 0) or GD (rho = 0) around heavy-ball SGD with a given noise per step, in NumPy."""
    w, trace, losses = np.array(start, np.float64), np.zeros_like(start), [loss(start)]
    for noise in noises:
        g = grad(w) + noise
        descent = g
        if rho:
            descent = grad(w + rho * g / np.linalg.norm(g)) + noise
            if renormalize:
                descent = descent * np.linalg.norm(g) / np.linalg.norm(descent)
        trace = descent + momentum * trace
        w = w - lr * trace
        losses.append(loss(w))
    return np.array(losses), w


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("rho", [0.0, 0.02])
def test_quartic_paths_match_numpy_with_noise(rho, renormalize):
    problem, start, steps, std, lr = quartic_saddle(), np.array([0.03, -0.02]), 40, 0.01, 0.2
    key = jax.random.PRNGKey(3)
    noises = [np.asarray(gradient_noise(key, t, jnp.zeros(2), std)) for t in range(steps)]
    expected_losses, expected_end = numpy_sam_path(
        quartic_grad, quartic_loss, start, lr, rho, renormalize, noises, momentum=0.9
    )
    tx = optax.sgd(lr, momentum=0.9)
    if rho:
        tx = optim.sam(tx, rho, renormalize=renormalize)
    trajectory = simulate(problem, tx, jnp.asarray(start), steps, jnp.asarray(std), key)
    np.testing.assert_allclose(trajectory.losses, expected_losses, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(trajectory.coordinates[-1], expected_end, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(trajectory.distances[-1], np.linalg.norm(expected_end), rtol=1e-10)


def test_linear_network_matches_numpy_and_has_a_strict_saddle_at_zero():
    problem = linear_network(SINGULAR_VALUES, 3)
    target = np.diag(SINGULAR_VALUES)
    zero = jax.tree.map(jnp.zeros_like, problem.init(jax.random.PRNGKey(0), 1.0))
    flat, unravel = ravel_pytree(zero)
    hessian = np.asarray(jax.hessian(lambda v: problem.loss(unravel(v)))(flat))
    # The Hessian at 0 is [[0, B], [B^T, 0]] for the bilinear term -tr(A^T W2 W1): eigenvalues
    # +-sigma_i(A), each once per hidden unit.
    expected = np.sort(np.concatenate([np.repeat(SINGULAR_VALUES, 3), -np.repeat(SINGULAR_VALUES, 3)]))
    np.testing.assert_allclose(np.linalg.eigvalsh(hessian), expected, atol=1e-12)
    assert float(problem.loss(zero)) == problem.saddle_loss == 2.625

    def grad(v):
        w1, w2 = v[:9].reshape(3, 3), v[9:].reshape(3, 3)
        residual = w2 @ w1 - target
        return np.concatenate([(w2.T @ residual).ravel(), (residual @ w1.T).ravel()])

    def loss(v):
        return 0.5 * np.sum((v[9:].reshape(3, 3) @ v[:9].reshape(3, 3) - target) ** 2)

    start = problem.init(jax.random.PRNGKey(1), 0.05)
    vector = np.concatenate([np.asarray(start["w1"]).ravel(), np.asarray(start["w2"]).ravel()])
    key, steps = jax.random.PRNGKey(2), 30
    noises = [
        np.concatenate([np.asarray(n["w1"]).ravel(), np.asarray(n["w2"]).ravel()])
        for n in (gradient_noise(key, t, start, 0.01) for t in range(steps))
    ]
    expected_losses, _ = numpy_sam_path(grad, loss, vector, 0.1, 0.05, False, noises)
    trajectory = simulate(problem, optim.sam(optax.sgd(0.1), 0.05), start, steps, jnp.asarray(0.01), key)
    np.testing.assert_allclose(trajectory.losses, expected_losses, rtol=1e-10)


def test_quick_preset_writes_every_table_and_figure(tmp_path):
    config = get_config("quick")
    config.workdir = str(tmp_path)
    record = ssam_saddle.main(config)
    for name in ("runs.csv", "escape.csv", "escape.md", "saddle.json"):
        assert os.path.getsize(tmp_path / name) > 0
    for problem in config.problems:
        assert os.path.getsize(tmp_path / f"trajectories_{problem}.png") > 0
        assert os.path.getsize(tmp_path / f"escape_{problem}.png") > 0
    with open(tmp_path / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    per_cell = len(config.learning_rates) * len(config.noise_stds) * len(config.seeds)
    # sgd has no radius; sam and ssam one cell grid per radius.
    assert len(rows) == len(config.problems) * per_cell * (1 + 2 * len(config.rhos))
    for cell in record["summary"]:
        matching = [
            r
            for r in rows
            if (r["problem"], r["method"], float(r["learning_rate"]), float(r["noise_std"]), r["rho"])
            == (cell["problem"], cell["method"], cell["learning_rate"], cell["noise_std"], str(cell["rho"]))
        ]
        assert len(matching) == cell["seeds"] == len(config.seeds)
        assert cell["escaped"] == sum(r["escape_step"] != "" for r in matching)
