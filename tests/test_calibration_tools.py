"""Temperature/isotonic scaling, margins, entropy, AUROC, predictive averaging, bootstrap and the
one-call summary, against plain NumPy float64 references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sam_jax import calibration as cal
from sam_jax.calibration import summary

pytestmark = pytest.mark.usefixtures("float64")


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sample_labels(probs, rng):
    """One categorical draw per row, by inverse CDF."""
    return (rng.random((len(probs), 1)) > np.cumsum(probs, 1)).sum(1).clip(0, probs.shape[1] - 1)


def synthetic_logits(rng, n=4000, k=5, temperature=2.0):
    """Logits whose labels are drawn from softmax(logits / temperature), the true temperature."""
    z = 3.0 * rng.standard_normal((n, k))
    return z, sample_labels(softmax(z / temperature), rng)


# ---------------------------------------------------------------- temperature and isotonic scaling


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_fit_temperature_recovers_generating_temperature(true_temperature):
    rng = np.random.default_rng(0)
    z, y = synthetic_logits(rng, n=20000, temperature=true_temperature)
    fitted = float(cal.fit_temperature(jnp.asarray(z), jnp.asarray(y)))
    # The MLE of 1/T has standard error sqrt(1 / (n Var_p[z])) ~ 1% here; allow 5 of them.
    assert abs(fitted / true_temperature - 1) < 0.05
    # And it is the NLL minimiser: a grid of temperatures around it gives no lower NLL.
    grid = fitted * np.exp(np.linspace(-0.05, 0.05, 11))
    nlls = [-np.mean(np.log(softmax(z / t)[np.arange(len(y)), y])) for t in grid]
    assert np.argmin(nlls) == 5


def test_fit_temperature_masked_and_bounded():
    rng = np.random.default_rng(1)
    z, y = synthetic_logits(rng, n=600)
    mask = np.r_[np.ones(500), np.zeros(100)]
    full = cal.fit_temperature(jnp.asarray(z[:500]), jnp.asarray(y[:500]))
    padded = cal.fit_temperature(jnp.asarray(z), jnp.asarray(y), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(padded), float(full), rtol=1e-9)
    separable = np.eye(3)[np.arange(30) % 3] * 0.5  # NLL keeps falling as T -> 0
    t_min = float(cal.fit_temperature(jnp.asarray(separable), jnp.asarray(np.arange(30) % 3), bounds=(0.05, 10.0)))
    np.testing.assert_allclose(t_min, 0.05, rtol=1e-5)
    with pytest.raises(ValueError, match="bounds"):
        cal.fit_temperature(jnp.asarray(z), jnp.asarray(y), bounds=(1.0, 0.5))


def test_tce_is_ece_after_scaling_and_lowers_ece():
    rng = np.random.default_rng(2)
    z, y = synthetic_logits(rng, n=8000, temperature=2.5)
    zv, yv, zt, yt = (jnp.asarray(a) for a in (z[:4000], y[:4000], z[4000:], y[4000:]))
    t = cal.fit_temperature(zv, yv)
    expected = cal.ece(jax.nn.softmax(zt / t), yt)
    np.testing.assert_allclose(float(cal.tce(zv, yv, zt, yt)), float(expected), rtol=1e-12)
    assert float(expected) < 0.5 * float(cal.ece(jax.nn.softmax(zt), yt))


def test_isotonic_calibrator_is_monotone_and_lowers_ece():
    rng = np.random.default_rng(3)
    z, y = synthetic_logits(rng, n=6000, temperature=3.0)  # overconfident logits
    p = softmax(z)
    calibrator = cal.fit_isotonic(jnp.asarray(p[:3000]), jnp.asarray(y[:3000]))
    grid = np.linspace(0, 1, 201)
    for k in range(p.shape[1]):
        knots_x, knots_y = np.asarray(calibrator.knots_x[k]), np.asarray(calibrator.knots_y[k])
        mapped = np.interp(grid, knots_x, knots_y)
        assert np.all(np.diff(mapped) >= 0)
    # Each class map agrees with scikit-learn's own predictions on the fitted data.
    from sklearn.isotonic import IsotonicRegression

    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip")
    reference.fit(p[:3000, 1], y[:3000] == 1)
    np.testing.assert_allclose(
        np.interp(p[3000:, 1], np.asarray(calibrator.knots_x[1]), np.asarray(calibrator.knots_y[1])),
        reference.predict(p[3000:, 1]),
        atol=1e-12,
    )
    calibrated = calibrator(jnp.asarray(p[3000:]))
    np.testing.assert_allclose(np.asarray(calibrated).sum(1), 1.0, atol=1e-12)
    before = float(cal.ece(jnp.asarray(p[3000:]), jnp.asarray(y[3000:])))
    after = float(cal.ece(calibrated, jnp.asarray(y[3000:])))
    assert after < 0.5 * before


# ---------------------------------------------------------------- margins and entropy


def test_margins_moment_and_entropy_match_reference():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((50, 4)) * 2
    z[:5, 1] = z[:5, 0]  # ties between the label and the runner-up
    y = np.r_[np.zeros(5, int), rng.integers(0, 4, 45)]
    ref = np.array([z[i, y[i]] - max(z[i, j] for j in range(4) if j != y[i]) for i in range(50)])
    np.testing.assert_allclose(np.asarray(cal.margins(jnp.asarray(z), jnp.asarray(y))), ref, rtol=1e-12)
    assert np.all(ref[:5] <= 0)
    np.testing.assert_allclose(
        float(cal.margin_moment(jnp.asarray(z), jnp.asarray(y))), np.mean(np.exp(-ref)), rtol=1e-12
    )
    huge = np.array([[0.0, 200.0], [1.0, 0.0]])  # exp(200) overflows only in padding
    got = cal.margin_moment(jnp.asarray(huge, jnp.float32), jnp.array([0, 0]), mask=jnp.array([0, 1]))
    np.testing.assert_allclose(float(got), np.exp(-1.0), rtol=1e-6)
    # Theorem 4.1: ECE <= (K - 1) Q.
    p = jnp.asarray(softmax(z))
    q = float(cal.margin_moment(jnp.asarray(z), jnp.asarray(y)))
    assert float(cal.ece(p, jnp.asarray(y))) <= 3 * q


def test_mse_optimum_confidence_and_sam_entropy_coefficients():
    np.testing.assert_allclose(cal.mse_optimum_confidence(10), np.e / (np.e + 9))
    assert round(cal.mse_optimum_confidence(10), 2) == 0.23  # the value quoted in App. D.1
    np.testing.assert_allclose(cal.mse_optimum_confidence(10), softmax(np.eye(10)[:1])[0, 0])
    p = jnp.array([[0.9, 0.1], [0.3, 0.7]])
    p_tilde = jnp.array([[0.8, 0.2], [0.4, 0.6]])
    y = jnp.array([0, 1])
    np.testing.assert_allclose(cal.sam_entropy_coefficient(p, p_tilde, y), [0.2 / 0.1, 0.4 / 0.3])
    bound = cal.sam_entropy_coefficient_bound(p_tilde, y, 0.1, jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(bound, [0.2 / (1 - np.exp(0.05) * 0.8), 0.4 / (1 - np.exp(0.1) * 0.6)])
    np.testing.assert_allclose(cal.binary_entropy(jnp.array([0.0, 0.5, 1.0])), [0, np.log(2), 0])


# ---------------------------------------------------------------- OOD


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_sklearn(ties):
    rng = np.random.default_rng(5)
    s_in, s_out = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    if ties:
        s_in, s_out = np.round(s_in), np.round(s_out)  # many tied scores across the two sets
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[s_in, s_out])
    np.testing.assert_allclose(float(cal.auroc(jnp.asarray(s_in), jnp.asarray(s_out))), expected, rtol=1e-12)
    w_in, w_out = rng.integers(0, 3, 300), rng.integers(0, 3, 200)
    weighted = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[s_in, s_out], sample_weight=np.r_[w_in, w_out])
    got = cal.auroc(jnp.asarray(s_in), jnp.asarray(s_out), mask_in=jnp.asarray(w_in), mask_out=jnp.asarray(w_out))
    np.testing.assert_allclose(float(got), weighted, rtol=1e-12)


def test_misclassification_auroc_matches_sklearn_on_correctness():
    rng = np.random.default_rng(9)
    probs = softmax(2.0 * rng.standard_normal((400, 4)))
    labels = sample_labels(probs, rng)
    correct = probs.argmax(1) == labels
    expected = roc_auc_score(correct, probs.max(1))
    got = cal.misclassification_auroc(jnp.asarray(probs), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    mask = (rng.random(400) > 0.3).astype(np.float64)
    weighted = roc_auc_score(correct, probs.max(1), sample_weight=mask)
    got = cal.misclassification_auroc(jnp.asarray(probs), jnp.asarray(labels), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(got), weighted, rtol=1e-12)
    all_right = cal.misclassification_auroc(jnp.asarray(probs), jnp.asarray(probs.argmax(1)))
    assert not np.isfinite(float(all_right))  # no wrong prediction: the AUROC is undefined


def test_member_average_log_probs_is_the_mean_softmax():
    rng = np.random.default_rng(10)
    logits = rng.standard_normal((6, 3, 5))
    expected = np.log(np.mean([softmax(logits[:, m]) for m in range(3)], axis=0))
    np.testing.assert_allclose(cal.member_average_log_probs(jnp.asarray(logits)), expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[N, M, K\]"):
        cal.member_average_log_probs(jnp.asarray(logits[:, 0]))


def test_ood_scores():
    p = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    np.testing.assert_allclose(cal.max_probability_score(p), [0.5, 1.0])
    np.testing.assert_allclose(cal.negative_entropy_score(p), [-np.log(2), 0.0])
    with pytest.raises(ValueError, match="1-D"):
        cal.auroc(p, p[:, 0])


# ---------------------------------------------------------------- predictive averaging, bootstrap


def test_predictive_average_ensemble_and_sampled_forms():
    rng = np.random.default_rng(6)
    members = [rng.standard_normal((7, 3)) for _ in range(3)]
    ensemble = cal.predictive_average([lambda m=m: jnp.asarray(m) for m in members])
    np.testing.assert_allclose(ensemble, np.mean([softmax(m) for m in members], axis=0), rtol=1e-12)

    key = jax.random.PRNGKey(0)
    shift = jnp.asarray(rng.standard_normal((7, 3)))
    sample = lambda k: shift + jax.random.normal(k, (7, 3))
    sampled = cal.predictive_average(sample, key=key, num_samples=4)
    expected = np.mean([softmax(np.asarray(sample(k))) for k in jax.random.split(key, 4)], axis=0)
    np.testing.assert_allclose(sampled, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="num_samples"):
        cal.predictive_average(sample, key=key)
    with pytest.raises(ValueError, match="non-empty"):
        cal.predictive_average([])


class DropoutClassifier(nn.Module):
    """Dense -> dropout -> Dense: the smallest model with MC-dropout."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(nn.Dense(16)(x)))
        return nn.Dense(3)(x)


def test_mc_dropout_averages_stochastic_passes():
    model = DropoutClassifier()
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
    variables = model.init(jax.random.PRNGKey(2), x)
    sample = jax.jit(lambda k: model.apply(variables, x, train=True, rngs={"dropout": k}))
    averaged = cal.predictive_average(sample, key=jax.random.PRNGKey(3), num_samples=3)
    passes = [jax.nn.softmax(sample(k)) for k in jax.random.split(jax.random.PRNGKey(3), 3)]
    assert not np.allclose(passes[0], passes[1])  # dropout really is stochastic
    np.testing.assert_allclose(averaged, np.mean(passes, axis=0), rtol=1e-12)


def test_bootstrap_interval_matches_numpy_resampling():
    rng = np.random.default_rng(8)
    p = rng.dirichlet(np.ones(3), 200)
    y = rng.integers(0, 3, 200)
    key = jax.random.PRNGKey(4)
    metric = functools.partial(cal.ece, num_bins=10)
    interval = cal.bootstrap_ci(metric, jnp.asarray(p), jnp.asarray(y), num_samples=30, key=key)
    replicates = []
    for k in jax.random.split(key, 30):
        idx = np.asarray(jax.random.randint(k, (200,), 0, 200))
        replicates.append(float(metric(jnp.asarray(p[idx]), jnp.asarray(y[idx]))))
    np.testing.assert_allclose([interval.lower, interval.upper], np.quantile(replicates, [0.025, 0.975]), rtol=1e-9)
    np.testing.assert_allclose(interval.estimate, metric(jnp.asarray(p), jnp.asarray(y)))
    assert interval.lower <= interval.estimate <= interval.upper
    with pytest.raises(ValueError, match="leading dimension"):
        cal.bootstrap_ci(metric, jnp.asarray(p), jnp.asarray(y[:10]), key=key)


# ---------------------------------------------------------------- one-call summary


def test_calibration_metrics_agrees_with_individual_metrics():
    rng = np.random.default_rng(10)
    z, y = synthetic_logits(rng, n=500, temperature=2.0)
    zt, yt = jnp.asarray(np.r_[z[:300], z[:20]]), jnp.asarray(np.r_[y[:300], y[:20]])
    mask = jnp.asarray(np.r_[np.ones(300), np.zeros(20)])  # padded to 320
    zv, yv = jnp.asarray(z[300:]), jnp.asarray(y[300:])
    got = cal.calibration_metrics(zt, yt, mask=mask, val_logits=zv, val_labels=yv, loss="mse")
    z3, y3 = jnp.asarray(z[:300]), jnp.asarray(y[:300])
    p3 = jax.nn.softmax(z3)
    t = cal.fit_temperature(zv, yv)
    expected = {
        "accuracy": cal.accuracy(p3, y3),
        "nll": cal.nll(p3, y3),
        "brier": cal.brier(p3, y3),
        "ece": cal.ece(p3, y3),
        "adaptive_ece": cal.adaptive_ece(p3, y3),
        "classwise_ece": cal.classwise_ece(p3, y3),
        "mce": cal.max_calibration_error(p3, y3),
        "kce": cal.kernel_calibration_error(p3, y3),
        "mean_confidence": cal.mean_confidence(p3),
        "margin_moment": cal.margin_moment(z3, y3),
        "mean_margin": jnp.mean(cal.margins(z3, y3)),
        "true_class_entropy": cal.true_class_entropy(p3, y3),
        "loss": np.mean(0.5 * ((z[:300] - np.eye(5)[y[:300]]) ** 2).sum(1)),
        "temperature": t,
        "tce": cal.ece(jax.nn.softmax(z3 / t), y3),
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], float(value), rtol=1e-9, atol=1e-12, err_msg=name)
    shapes = jax.eval_shape(
        functools.partial(summary._metrics, num_bins=15, loss="cross_entropy"), z3, y3, None, None, None, None
    )
    assert set(shapes) == set(expected) - {"temperature", "tce"}
    with pytest.raises(ValueError, match="together"):
        cal.calibration_metrics(z3, y3, val_logits=zv)
    with pytest.raises(ValueError, match="Unknown loss"):
        cal.calibration_metrics(z3, y3, loss="hinge")
