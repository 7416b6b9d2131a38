"""Calibration-baseline losses against float64 NumPy references written from the papers' formulas.

Values are compared with the references, gradients with central finite differences of the
references; every registered loss is also checked for finite values and gradients at float32
logits of magnitude 1e4, for the identities that reduce it to cross-entropy, for hyper-parameter
and label errors, and the stateful ones (AdaFocal, CRL, BalCAL) for their state updates.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax import losses, models

pytestmark = pytest.mark.usefixtures("float64")

B, K = 6, 4


def log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def true_prob(z, y):
    return np.exp(log_softmax(z))[np.arange(len(y)), y]


def weighted_mean(values, mask):
    w = np.ones(len(values)) if mask is None else np.asarray(mask, float)
    return float(values @ w / w.sum())


def ref_ce(z, y, mask=None):
    return weighted_mean(-np.log(true_prob(z, y)), mask)


def ref_label_smoothing(z, y, mask=None, smoothing=0.1):
    lp = log_softmax(z)
    return weighted_mean(-(1 - smoothing) * lp[np.arange(len(y)), y] - smoothing * lp.mean(-1), mask)


def ref_focal(z, y, mask=None, gamma=3.0):
    p = true_prob(z, y)
    return weighted_mean(-((1 - p) ** gamma) * np.log(p), mask)


def ref_flsd53(z, y, mask=None):
    p = true_prob(z, y)
    return weighted_mean(-((1 - p) ** np.where(p < 0.2, 5.0, 3.0)) * np.log(p), mask)


def ref_dual_focal(z, y, mask=None, gamma=5.0):
    probs = np.exp(log_softmax(z))
    p = probs[np.arange(len(y)), y]
    p_j = np.array([max([q for q in row if q < py], default=0.0) for row, py in zip(probs, p)])
    return weighted_mean(-((1 - p + p_j) ** gamma) * np.log(p), mask)


def ref_mmce(z, y, mask=None, weight=1.0):
    probs = np.exp(log_softmax(z))
    r, c = probs.max(-1), (probs.argmax(-1) == y).astype(float)
    w = np.ones(len(y)) if mask is None else np.asarray(mask, float)
    res = (c - r) * w / w.sum()
    kernel = np.exp(-np.abs(r[:, None] - r[None, :]) / 0.4)
    return ref_ce(z, y, mask) + weight * np.sqrt(res @ kernel @ res + 1e-10)


def ref_mdca(z, y, mask=None, weight=1.0):
    probs = np.exp(log_softmax(z))
    w = np.ones(len(y)) if mask is None else np.asarray(mask, float)
    w = w / w.sum()
    gap = w @ probs - w @ np.eye(z.shape[1])[y]
    return ref_ce(z, y, mask) + weight * np.abs(gap).mean()


def ref_mbls(z, y, mask=None, margin=10.0, weight=0.1):
    penalty = np.maximum(z.max(-1, keepdims=True) - z - margin, 0).mean(-1)
    return weighted_mean(-np.log(true_prob(z, y)) + weight * penalty, mask)


def ref_acls(z, y, mask=None, pos_lambda=1.0, neg_lambda=0.1, alpha=0.1, margin=10.0, frozen=None):
    """``frozen``: logits whose max stands in the negative term (the stop-gradient of ACLS)."""
    top, k = z.max(-1), z.shape[1]
    frozen_top = top if frozen is None else frozen.max(-1)
    others = z.argmax(-1)[:, None] != np.arange(k)
    pos = np.maximum(top - margin, 0) ** 2
    neg = (others * np.maximum(frozen_top[:, None] - z - margin, 0) ** 2).sum(-1) / (k - 1)
    return weighted_mean(-np.log(true_prob(z, y)) + alpha * (pos_lambda * pos + neg_lambda * neg), mask)


def ref_cpc(z, y, mask=None, lambda_bdc=0.1, lambda_bec=1.0):
    k, values = z.shape[1], []
    for row, label in zip(z, y):
        rest = [j for j in range(k) if j != label]
        bdc = -np.mean([np.log(1 / (1 + np.exp(-(row[label] - row[j])))) for j in rest])
        bec = -np.mean([0.5 * np.log(1 / (1 + np.exp(-(row[a] - row[b])))) for a in rest for b in rest if a != b])
        values.append(lambda_bdc * bdc + lambda_bec * bec)
    return weighted_mean(-np.log(true_prob(z, y)) + np.array(values), mask)


def ref_confidence_penalty(z, y, mask=None, weight=0.1):
    lp = log_softmax(z)
    entropy = -(np.exp(lp) * lp).sum(-1)
    return weighted_mean(-lp[np.arange(len(y)), y] - weight * entropy, mask)


def ref_csam(z, y, mask=None, gamma=1.0):
    p = true_prob(z, y)
    return weighted_mean(-np.where(p <= 0.5, 1.0, (1 + p) ** -gamma) * np.log(p), mask)


REFERENCES = {
    "cross_entropy": (ref_ce, {}),
    "label_smoothing": (ref_label_smoothing, {"smoothing": 0.2}),
    "focal": (ref_focal, {"gamma": 0.5}),
    "flsd53": (ref_flsd53, {}),
    "dual_focal": (ref_dual_focal, {"gamma": 2.0}),
    "mmce": (ref_mmce, {"weight": 2.0}),
    "mdca": (ref_mdca, {"weight": 1.5}),
    "mbls": (ref_mbls, {"margin": 2.0, "weight": 0.3}),
    "acls": (ref_acls, {"margin": 2.0, "alpha": 0.2}),
    "cpc": (ref_cpc, {"lambda_bdc": 0.3, "lambda_bec": 0.7}),
    "confidence_penalty": (ref_confidence_penalty, {"weight": 0.3}),
    "csam": (ref_csam, {"gamma": 1.5}),
}


def numeric_grad(fn, z, step=1e-6):
    grad = np.zeros_like(z)
    for index in np.ndindex(z.shape):
        plus, minus = z.copy(), z.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = (fn(plus) - fn(minus)) / (2 * step)
    return grad


def make_batch(seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return scale * rng.normal(size=(B, K)), rng.integers(0, K, size=B)


MASK = np.array([1.0, 1.0, 0.0, 1.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def jax_values_and_grads(float64):
    """Every reference loss's value and gradient, in one jitted call per mask case (one compile)."""
    z, y = make_batch(seed=1, scale=4.0)

    @jax.jit
    def all_losses(z, y, mask):
        return {
            name: jax.value_and_grad(losses.get_loss(name, **hparams))(z, y, mask)
            for name, (_, hparams) in REFERENCES.items()
        }

    return z, y, {masked: all_losses(z, y, jnp.asarray(MASK) if masked else None) for masked in (False, True)}


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("masked", [False, True])
def test_value_and_gradient_match_numpy_reference(jax_values_and_grads, name, masked):
    reference, hparams = REFERENCES[name]
    z, y, results = jax_values_and_grads
    value, grad = results[masked][name]
    mask = MASK if masked else None
    np.testing.assert_allclose(value, reference(z, y, mask, **hparams), rtol=1e-10)
    frozen = {"frozen": z} if name == "acls" else {}
    expected = numeric_grad(lambda v: reference(v, y, mask, **hparams, **frozen), z)
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_default_hyperparameters_match_reference_defaults():
    z, y = make_batch(seed=2, scale=6.0)
    values = jax.jit(lambda z, y: {name: losses.get_loss(name)(z, y) for name in REFERENCES})(z, y)
    for name, (reference, _) in REFERENCES.items():
        np.testing.assert_allclose(values[name], reference(z, y), rtol=1e-10, err_msg=name)


EXTREME = np.array(
    [
        [1e4, -1e4, 0.0, 5.0],
        [-1e4, 1e4, 3.0, -2.0],
        [0.0, 0.0, 0.0, 0.0],
        [1e4, 1e4, -1e4, 0.0],
        [-1e4, -1e4, -1e4, 1e4],
        [2.0, 1.0, 0.5, 1e4],
    ],
    np.float32,
)
EXTREME_LABELS = np.array([0, 0, 2, 1, 3, 0])
EXTREME_CASES = [(name, {}) for name in sorted(losses.LOSSES)] + [
    ("focal", {"gamma": 0.5}),
    ("dual_focal", {"gamma": 0.5}),
    ("label_smoothing", {"smoothing": 0.5}),
    ("adafocal", {"gamma_initial": -2.0}),
    ("adafocal", {"gamma_initial": 0.5}),
]


def _stacked_if_needed(name, z):
    return jnp.stack([z, -0.5 * z], axis=1) if name == "balcal" else z


@pytest.fixture(scope="module")
def extreme_results():
    """Value and gradient of every case at the float32 ``EXTREME`` logits, in one jitted call."""

    @jax.jit
    def all_cases(z, y, mask):
        return [
            jax.value_and_grad(losses.get_loss(name, **hparams))(_stacked_if_needed(name, z), y, mask)
            for name, hparams in EXTREME_CASES
        ]

    return all_cases(jnp.asarray(EXTREME), jnp.asarray(EXTREME_LABELS), jnp.asarray(MASK, jnp.float32))


@pytest.mark.parametrize(
    "case", range(len(EXTREME_CASES)), ids=[f"{name}{hparams or ''}" for name, hparams in EXTREME_CASES]
)
def test_extreme_float32_logits_give_finite_values_and_gradients(extreme_results, case):
    value, grad = extreme_results[case]
    assert value.dtype == jnp.float32
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (EXTREME_CASES[case], value, grad)


IDENTITY_CASES = [
    ("focal", {"gamma": 0.0}),
    ("label_smoothing", {"smoothing": 0.0}),
    ("csam", {"gamma": 0.0}),
    ("mmce", {"weight": 0.0}),
    ("dual_focal", {"gamma": 0.0}),
    ("mdca", {"weight": 0.0}),
    ("mbls", {"weight": 0.0}),
    ("acls", {"alpha": 0.0}),
    ("confidence_penalty", {"weight": 0.0}),
    ("cpc", {"lambda_bdc": 0.0, "lambda_bec": 0.0}),
    ("crl", {}),
    ("adafocal", {"gamma_initial": 0.0, "switch_point": 0.0}),
]


def test_identities_reducing_to_cross_entropy():
    """focal/dual focal/CSAM gamma = 0, LS smoothing = 0, regulariser weights 0, CRL with an empty
    history and AdaFocal with gamma 0 are all cross-entropy."""
    z, y = make_batch(seed=3)
    values = jax.jit(
        lambda z, y, mask: [losses.get_loss(name, **hparams)(z, y, mask) for name, hparams in IDENTITY_CASES]
    )(z, y, MASK)
    for (name, _), value in zip(IDENTITY_CASES, values):
        np.testing.assert_allclose(value, ref_ce(z, y, MASK), rtol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    "name,hparams,bad",
    [
        ("focal", {"gamma": -0.5}, "gamma"),
        ("dual_focal", {"gamma": -1.0}, "gamma"),
        ("label_smoothing", {"smoothing": 1.0}, "smoothing"),
        ("label_smoothing", {"smoothing": -0.1}, "smoothing"),
        ("mmce", {"weight": -1.0}, "weight"),
        ("mdca", {"weight": -1.0}, "weight"),
        ("mbls", {"margin": -1.0}, "margin"),
        ("acls", {"neg_lambda": -0.1}, "neg_lambda"),
        ("cpc", {"lambda_bec": -1.0}, "lambda_bec"),
        ("confidence_penalty", {"weight": -0.1}, "weight"),
        ("csam", {"gamma": -0.5}, "gamma"),
        ("csam", {"gamma": float("nan")}, "gamma"),
        ("crl", {"rank_weight": -1.0}, "rank_weight"),
        ("adafocal", {"num_bins": 0}, "num_bins"),
        ("adafocal", {"switch_point": -0.2}, "switch_point"),
        ("balcal", {"delta": 0.0}, "delta"),
        ("balcal", {"lambda_init": 1.5}, "lambda_init"),
        ("focal", {"gama": 1.0}, "gama"),
        ("cross_entropy", {"smoothing": 0.1}, "smoothing"),
    ],
)
def test_bad_hyperparameters_raise_naming_them(name, hparams, bad):
    with pytest.raises(ValueError, match=bad):
        losses.get_loss(name, **hparams)
    with pytest.raises(ValueError, match=bad):
        losses.get_stateful_loss(name, **hparams)


def test_unknown_loss_raises():
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        losses.get_loss("hinge")


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_label_out_of_range_raises(name):
    z = _stacked_if_needed(name, jnp.zeros((3, K)))
    with pytest.raises(ValueError, match=f"label {K} at index 1"):
        losses.get_loss(name)(z, jnp.array([0, K, 1]))


def test_get_loss_is_jit_safe_and_cached_without_hparams():
    assert losses.get_loss("focal") is losses.get_loss("focal")
    z, y = make_batch(seed=4)
    jitted = jax.jit(lambda z, y: losses.get_loss("mbls", margin=2.0)(z, y))
    np.testing.assert_allclose(jitted(z, y), ref_mbls(z, y, margin=2.0), rtol=1e-10)


# ----------------------------------------------------------------------------------- AdaFocal


def ref_adafocal_update(gamma, edges, z, y, lam=1.0, gamma_max=20.0, gamma_min=-2.0, switch=0.2):
    """Equal-mass validation bins (np.interp of the sorted confidences) and the gamma rule."""
    probs = np.exp(log_softmax(z))
    conf, correct = probs.max(-1), (probs.argmax(-1) == y).astype(float)
    n, num_bins = len(conf), len(gamma)
    new_edges = np.interp(np.linspace(0, n, num_bins + 1), np.arange(n), np.sort(conf))
    new_gamma = []
    for b in range(num_bins):
        lower, upper = new_edges[b], new_edges[b + 1]
        inside = (conf > lower) & (conf <= upper) if b else (conf <= upper)
        gap = conf[inside].mean() - correct[inside].mean() if inside.any() else 0.0
        g = gamma[b] * np.exp(lam * gap) if gamma[b] > 0 else gamma[b] * np.exp(-lam * gap)
        if abs(g) < switch:
            g = -switch if g > 0 else switch
        new_gamma.append(min(max(g, gamma_min), gamma_max))
    return np.array(new_gamma), new_edges


def ref_adafocal_loss(gamma, edges, z, y):
    p = true_prob(z, y)
    values = []
    for pi in p:
        b = min(max(np.searchsorted(edges[1:-1], pi, side="right"), 0), len(gamma) - 1)
        weight = (1 - pi) ** gamma[b] if gamma[b] >= 0 else (1 + pi) ** -gamma[b]
        values.append(-weight * np.log(pi))
    return float(np.mean(values))


def test_adafocal_update_and_loss_match_reference():
    rng = np.random.default_rng(5)
    val_z, val_y = 3.0 * rng.normal(size=(40, K)), rng.integers(0, K, size=40)
    gamma = np.array([1.0, -0.5, 0.25, 3.0, 19.0])
    state = losses.AdaFocalState(jnp.asarray(gamma), jnp.linspace(0.0, 1.0, 6))
    new = jax.jit(losses.adafocal_update)(state, jnp.asarray(val_z), jnp.asarray(val_y))
    expected_gamma, expected_edges = ref_adafocal_update(gamma, None, val_z, val_y)
    np.testing.assert_allclose(new.edges, expected_edges, rtol=1e-12)
    np.testing.assert_allclose(new.gamma, expected_gamma, rtol=1e-12)
    assert np.any(np.asarray(new.gamma) < 0) and np.any(np.asarray(new.gamma) > 0)
    z, y = make_batch(seed=6)
    np.testing.assert_allclose(
        losses.adafocal_loss(z, y, new),
        ref_adafocal_loss(np.asarray(new.gamma), np.asarray(new.edges), z, y),
        rtol=1e-10,
    )


ADAFOCAL_CHANGED = {"lam": 0.5, "gamma_max": 5.0, "gamma_min": -1.0, "switch_point": 0.3}
ADAFOCAL_DEFAULTS = {"lam": 1.0, "gamma_max": 20.0, "gamma_min": -2.0, "switch_point": 0.2}


def test_adafocal_epoch_update_uses_its_hyperparameters():
    """Through the registry's ``epoch_update`` at non-default values, each of which changes the result:
    bin 0 is scaled by ``exp(lam * gap)``, bin 1 clipped at ``gamma_min``, bin 2 switched by
    ``switch_point`` and bin 4 clipped at ``gamma_max``."""
    rng = np.random.default_rng(5)
    val_z, val_y = 3.0 * rng.normal(size=(40, K)), rng.integers(0, K, size=40)
    gamma = np.array([1.0, -1.8, 0.2, 3.0, 19.0])
    spec = losses.get_stateful_loss("adafocal", num_bins=5, **ADAFOCAL_CHANGED)
    state = losses.AdaFocalState(jnp.asarray(gamma), jnp.linspace(0.0, 1.0, 6))
    new = jax.jit(spec.epoch_update)(state, jnp.asarray(val_z), jnp.asarray(val_y), mask=jnp.ones(40))

    def reference(hparams):
        renamed = {("switch" if k == "switch_point" else k): v for k, v in hparams.items()}
        return ref_adafocal_update(gamma, None, val_z, val_y, **renamed)

    expected_gamma, expected_edges = reference(ADAFOCAL_CHANGED)
    np.testing.assert_allclose(new.gamma, expected_gamma, rtol=1e-12)
    np.testing.assert_allclose(new.edges, expected_edges, rtol=1e-12)
    for field, default in ADAFOCAL_DEFAULTS.items():
        reverted, _ = reference({**ADAFOCAL_CHANGED, field: default})
        assert np.abs(reverted - expected_gamma).max() > 0.1, f"adafocal.{field} has no effect in this case"


def test_adafocal_update_ignores_padding_rows():
    rng = np.random.default_rng(7)
    val_z, val_y = 3.0 * rng.normal(size=(30, K)), rng.integers(0, K, size=30)
    padded_z = np.concatenate([val_z, np.full((5, K), 7.0)])
    padded_y = np.concatenate([val_y, np.zeros(5, int)])
    mask = np.concatenate([np.ones(30), np.zeros(5)])
    update = jax.jit(losses.get_stateful_loss("adafocal", num_bins=4).epoch_update)
    state = losses.adafocal_init(num_bins=4)
    padded = update(state, padded_z, padded_y, mask=mask)
    plain = update(state, val_z, val_y, mask=np.ones(30))
    np.testing.assert_allclose(padded.gamma, plain.gamma, rtol=1e-12)
    np.testing.assert_allclose(padded.edges, plain.edges, rtol=1e-12)


# ----------------------------------------------------------------------------------------- CRL


def ref_crl(z, y, rate, mask, rank_weight):
    """CE plus ``rank_weight`` times the mean over pairs (i, i + 1 mod B) of the ranking hinge."""
    kappa = np.exp(log_softmax(z)).max(-1)
    terms, weights = [], []
    for i in range(len(y)):
        j = (i + 1) % len(y)
        terms.append(max(0.0, -np.sign(rate[i] - rate[j]) * (kappa[i] - kappa[j]) + abs(rate[i] - rate[j])))
        weights.append(mask[i] * mask[j])
    return ref_ce(z, y, mask) + rank_weight * np.dot(terms, weights) / np.sum(weights)


def test_crl_history_update_and_ranking_loss_match_reference():
    rng = np.random.default_rng(8)
    n = 10
    correct, seen = rng.integers(0, 4, size=n).astype(float), np.full(n, 4.0)
    history = losses.CorrectnessHistory(jnp.asarray(correct), jnp.asarray(seen))
    z, y = make_batch(seed=10)  # a batch where some ranking hinges are active
    indices = np.array([3, 7, 1, 3, 0, 9])  # example 3 twice: both visits count
    updated = jax.jit(losses.crl_update)(history, z, y, indices=indices, mask=MASK)
    expected_correct, expected_seen = correct.copy(), seen.copy()
    for i, index in enumerate(indices):
        expected_seen[index] += MASK[i]
        expected_correct[index] += MASK[i] * (z[i].argmax() == y[i])
    np.testing.assert_array_equal(updated.correct, expected_correct)
    np.testing.assert_array_equal(updated.seen, expected_seen)

    rate = correct[indices] / seen[indices]
    loss_fn = lambda v: losses.crl_loss(v, y, history, indices=indices, rank_weight=0.5, mask=MASK)
    value, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(z))
    np.testing.assert_allclose(value, ref_crl(z, y, rate, MASK, 0.5), rtol=1e-10)
    # The confidence is differentiated through: the ranking term moves the gradient away from CE's.
    expected_grad = numeric_grad(lambda v: ref_crl(v, y, rate, MASK, 0.5), z)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    assert np.abs(expected_grad - numeric_grad(lambda v: ref_ce(v, y, MASK), z)).max() > 1e-3


# -------------------------------------------------------------------------------------- BalCAL


BALCAL_UPDATE = jax.jit(losses.balcal_update)


def ref_balcal_update(z2, y, delta, tolerance=1e-4):
    def gap(lam):
        probs = np.exp(log_softmax(lam * z2[:, 0] + (1 - lam) * z2[:, 1]))
        return delta * np.mean(probs.argmax(-1) == y) - probs.max(-1).mean()

    if gap(1.0) > 0:
        return 1.0
    left, right, best, best_gap = 0.0, 1.0, 1.0, abs(gap(1.0))
    while right - left > tolerance:
        mid = (left + right) / 2
        g = gap(mid)
        if abs(g) < best_gap:
            best, best_gap = mid, abs(g)
        left, right = (mid, right) if g > 0 else (left, mid)
    return best


def test_balcal_update_loss_and_prediction_match_reference():
    rng = np.random.default_rng(10)
    y = rng.integers(0, K, size=60)
    linear = 6.0 * rng.normal(size=(60, K)) + 8.0 * np.eye(K)[y]  # over-confident head
    etf = 0.3 * rng.normal(size=(60, K)) + 0.5 * np.eye(K)[y]  # under-confident head
    z2 = np.stack([linear, etf], axis=1)
    spec = losses.get_stateful_loss("balcal", delta=0.9)  # not the default 1, which gives another lam
    state = jax.jit(spec.epoch_update)(spec.init(60, K), z2, y, mask=jnp.ones(60))
    expected = ref_balcal_update(z2, y, 0.9)
    assert 0.0 < expected < 1.0 and abs(expected - ref_balcal_update(z2, y, 1.0)) > 0.01
    np.testing.assert_allclose(state.lam, expected, rtol=1e-12)
    np.testing.assert_allclose(spec.predict(z2, state), expected * linear + (1 - expected) * etf, rtol=1e-12)

    batch, labels = z2[:6], np.array([0, 0, 1, 2, 2, 2])
    counts = np.bincount(labels, minlength=K)
    scale = np.where(counts > 0, np.sqrt((6 / 3) / np.maximum(counts, 1)), 1.0)
    expected_loss = expected * ref_ce(batch[:, 0], labels) + (1 - expected) * ref_ce(batch[:, 1] * scale, labels)
    np.testing.assert_allclose(spec.loss(batch, labels, state), expected_loss, rtol=1e-10)


def test_balcal_keeps_linear_head_when_it_is_under_confident():
    rng = np.random.default_rng(11)
    y = rng.integers(0, K, size=60)
    z2 = np.stack([4.0 * np.eye(K)[y], rng.normal(size=(60, K))], axis=1)
    state = BALCAL_UPDATE(losses.balcal_init(0.3), z2, y)
    assert float(state.lam) == 1.0


def test_simplex_etf_is_equiangular():
    m = np.asarray(models.simplex_etf(jax.random.PRNGKey(0), 8, 5))
    gram = m.T @ m
    np.testing.assert_allclose(np.diag(gram), 1.0, rtol=1e-10)
    np.testing.assert_allclose(gram[~np.eye(5, dtype=bool)], -1 / 4, atol=1e-10)


# -------------------------------------------------------------------------- generic interface


def test_stateless_losses_have_empty_state_and_identity_updates():
    spec = losses.get_stateful_loss("focal", gamma=2.0)
    z, y = make_batch(seed=12)
    state = spec.init(100, K)
    assert state == () and spec.epoch_split is None
    assert spec.step_update(state, z, y, mask=MASK, indices=np.arange(B)) == ()
    np.testing.assert_allclose(
        spec.loss(z, y, state, mask=MASK, indices=np.arange(B)), ref_focal(z, y, MASK, gamma=2.0), rtol=1e-10
    )
    assert spec.predict(z, state) is z


def test_stateful_specs_say_when_to_update():
    assert losses.get_stateful_loss("adafocal").epoch_split == "validation"
    assert losses.get_stateful_loss("balcal").epoch_split == "train"
    assert losses.get_stateful_loss("crl").epoch_split is None
    history = losses.get_stateful_loss("crl").init(50, K)
    assert history.correct.shape == (50,) and history.seen.shape == (50,)
