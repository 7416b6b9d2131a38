"""SAM's descent/ascent gradient-norm tracker (``sam_jax.training.hooks.make_descent_norm_tracker``).

Checked against a NumPy float64 SAM step on the tanh-regression problem of the optimizer tests,
batch by batch (three batches with different ratios, so mean, std, min and max are distinct checks).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.training.hooks import make_descent_norm_tracker
from tests.tanh_regression import make_problem, numpy_grad

pytestmark = pytest.mark.usefixtures("float64")

RHO = 0.3
BATCH = 8


def tanh_apply(params, model_state, x):
    del model_state
    return jnp.tanh(x @ params["w"] + params["b"])


def half_mean_squared(outputs, targets):
    return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


def np_norm(tree: dict) -> float:
    return float(np.sqrt(sum(np.sum(v**2) for v in tree.values())))


def test_descent_norm_tracker_matches_numpy():
    params, x, y = make_problem(seed=1, batch_size=3 * BATCH)
    tracker = make_descent_norm_tracker(tanh_apply, half_mean_squared, RHO, batch_size=BATCH)
    ours = tracker(jax.tree.map(jnp.asarray, params), {}, jnp.asarray(x), jnp.asarray(y))
    ratios, ascents, descents, cosines = [], [], [], []
    for i in range(3):
        xb, yb = x[i * BATCH : (i + 1) * BATCH], y[i * BATCH : (i + 1) * BATCH]
        g = numpy_grad(params, xb, yb)
        d = numpy_grad({k: params[k] + RHO * g[k] / np_norm(g) for k in params}, xb, yb)
        ascents.append(np_norm(g))
        descents.append(np_norm(d))
        ratios.append(np_norm(d) / np_norm(g))
        cosines.append(sum(np.sum(g[k] * d[k]) for k in g) / (np_norm(g) * np_norm(d)))
    expected = {
        "ratio_mean": np.mean(ratios),
        "ratio_std": np.std(ratios),
        "ratio_min": np.min(ratios),
        "ratio_max": np.max(ratios),
        "ascent_norm_mean": np.mean(ascents),
        "descent_norm_mean": np.mean(descents),
        "cosine_mean": np.mean(cosines),
    }
    assert set(ours) == {f"sam_norms/{k}" for k in expected}
    for key, value in expected.items():
        np.testing.assert_allclose(ours[f"sam_norms/{key}"], value, rtol=1e-10, err_msg=key)
    assert np.ptp(ratios) > 1e-3  # the three batches differ, so mean, min and max are distinct checks


def test_descent_norm_tracker_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rho"):
        make_descent_norm_tracker(tanh_apply, half_mean_squared, 0.0, batch_size=BATCH)
    tracker = make_descent_norm_tracker(tanh_apply, half_mean_squared, RHO, batch_size=BATCH)
    params, x, y = make_problem(batch_size=BATCH - 1)
    with pytest.raises(ValueError, match="at least one batch"):
        tracker(params, {}, jnp.asarray(x), jnp.asarray(y))
