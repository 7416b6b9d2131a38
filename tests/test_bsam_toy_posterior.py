"""The 2-D toy posterior of Möllenhoff & Khan (2022, arXiv:2210.01620, Fig. 3 and App. G.1):
the Laplace precision against the closed-form logistic-regression Hessian, the grid integrals against
closed forms, and the quick preset end to end."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import bsam_toy_posterior as toy
from experiments.configs.bsam_toy_posterior import get_config

pytestmark = pytest.mark.usefixtures("float64")


def test_laplace_precision_is_the_logistic_regression_hessian():
    config = get_config("quick")
    x, y = toy.make_data(config)
    w = np.array([0.7, -1.3])
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    expected = (x * (p * (1 - p))[:, None]).T @ x + config.prior_precision * np.eye(2)
    got = toy.laplace_precision(w, jnp.asarray(x), jnp.asarray(y), config.prior_precision)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # The data are separable through the origin with the configured margin.
    angle = np.deg2rad(config.data.angle_degrees)
    normal = np.array([np.cos(angle), np.sin(angle)])
    assert np.all((x @ normal > 0) == (y == 1)) and np.abs(x @ normal).min() >= config.data.margin


def test_grid_integrals_match_closed_forms():
    axis = np.linspace(-6, 6, 241)
    w = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    mean, cov = np.array([0.5, -0.2]), np.array([[0.5, 0.2], [0.2, 0.3]])
    q = toy.grid_distribution(toy.gaussian_log_density(w, mean, cov))
    np.testing.assert_allclose(q @ w, mean, atol=1e-6)
    other_mean, other_cov = np.array([0.0, 0.3]), np.diag([0.8, 0.4])
    p = toy.grid_distribution(toy.gaussian_log_density(w, other_mean, other_cov))
    inv, diff = np.linalg.inv(other_cov), other_mean - mean
    closed = 0.5 * (np.trace(inv @ cov) + diff @ inv @ diff - 2 + np.log(np.linalg.det(other_cov) / np.linalg.det(cov)))
    np.testing.assert_allclose(toy.kl_on_grid(q, p), closed, rtol=1e-4)
    # The predictive of a point mass is the sigmoid at that point.
    point = np.zeros(len(w))
    point[np.argmin(np.sum((w - mean) ** 2, axis=1))] = 1.0
    x = np.array([[1.0, 2.0], [-0.5, 0.25]])
    expected = 1 / (1 + np.exp(-(x @ w[point > 0][0])))
    np.testing.assert_allclose(toy.predictive_on_grid(point, w, x), expected, rtol=1e-12)


def test_quick_preset_writes_numbers_and_figures(tmp_path):
    config = get_config("quick")
    config.workdir = str(tmp_path)
    results = toy.run(config)
    assert results["exact_mass_on_grid_border"] < 1e-3
    for name, entry in results["methods"].items():
        assert 0 <= entry["predictive_mean_abs_diff"] <= entry["predictive_max_abs_diff"] <= 1
        if "kl_to_exact" in entry:
            assert entry["kl_to_exact"] >= 0 and entry["kl_from_exact"] >= 0, name
    assert results["methods"]["sam_point"]["predictive_max_abs_diff"] > 0.01  # a point estimate is not Bayes
    with open(tmp_path / "toy_posterior.json") as f:
        methods = set(json.load(f)["methods"])
    assert methods == {"bsam_gamma0.1", "bsam_gamma0", "laplace_diag", "laplace_full", "sam_point"}
    assert (tmp_path / "toy_predictive.png").exists() and (tmp_path / "toy_posterior.png").exists()
