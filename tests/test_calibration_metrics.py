"""Calibration metrics against plain NumPy float64 references, on random and adversarial inputs."""

import fractions

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax import calibration as cal
from sam_jax.calibration import metrics as metrics_module

M = 15


pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------- plain references (loops allowed)


def ref_width_bin(c, num_bins):
    """1-based bin k with edge_{k-1} < c <= edge_k, edges k/M rounded to the dtype of ``c``."""
    for k in range(1, num_bins):
        if c <= type(c)(k / num_bins):
            return k
    return num_bins


def ref_top_label(p, y):
    conf = p.max(1)
    correct = np.array([float(np.argmax(row) == label) for row, label in zip(p, y)])
    return conf, correct


def ref_binned_error(conf, correct, bins, w, num_bins):
    total = w.sum()
    err, worst = 0.0, 0.0
    for b in range(1, num_bins + 1):
        sel = bins == b
        if w[sel].sum() > 0:
            count = w[sel].sum()
            gap = abs(np.sum(w[sel] * correct[sel]) / count - np.sum(w[sel] * conf[sel]) / count)
            err += count / total * gap
            worst = max(worst, gap)
    return err, worst


def ref_ece(p, y, w, num_bins=M):
    conf, correct = ref_top_label(p, y)
    bins = np.array([ref_width_bin(c, num_bins) for c in conf])
    return ref_binned_error(conf.astype(np.float64), correct, bins, w, num_bins)[0]


def ref_mce(p, y, w, num_bins=M):
    conf, correct = ref_top_label(p, y)
    bins = np.array([ref_width_bin(c, num_bins) for c in conf])
    return ref_binned_error(conf.astype(np.float64), correct, bins, w, num_bins)[1]


def ref_adaptive_ece(p, y, w, num_bins=M):
    conf, correct = ref_top_label(p, y)
    total = fractions.Fraction(float(w.sum()))
    bins = np.empty(len(conf), int)
    for i, c in enumerate(conf):
        below = fractions.Fraction(float(w[conf < c].sum()))
        bins[i] = int(below * num_bins / total) + 1
    return ref_binned_error(conf, correct, bins, w, num_bins)[0]


def ref_classwise_ece(p, y, w, num_bins=M):
    per_class = []
    for k in range(p.shape[1]):
        bins = np.array([ref_width_bin(c, num_bins) for c in p[:, k]])
        per_class.append(ref_binned_error(p[:, k], (y == k).astype(float), bins, w, num_bins)[0])
    return np.mean(per_class)


def ref_kce(p, y, w, bandwidth=0.4):
    conf, correct = ref_top_label(p, y)
    a = w * (correct - conf)
    kernel = np.exp(-np.abs(conf[:, None] - conf[None, :]) / bandwidth)  # dense [N, N]
    return np.sqrt(a @ kernel @ a) / w.sum()


def ref_accuracy(p, y, w):
    return np.sum(w * ref_top_label(p, y)[1]) / w.sum()


def ref_nll(p, y, w):
    return np.sum(w * -np.log(p[np.arange(len(y)), y])) / w.sum()


def ref_brier(p, y, w):
    onehot = np.eye(p.shape[1])[y]
    return np.sum(w * ((p - onehot) ** 2).sum(1)) / w.sum()


def ref_true_class_entropy(p, y, w):
    h = []
    for row, label in zip(p, y):
        q = row[label]
        h.append(sum(-v * np.log(v) for v in (q, 1 - q) if v > 0))
    return np.sum(w * np.array(h)) / w.sum()


PROB_METRICS = {
    "ece": (cal.ece, ref_ece),
    "adaptive_ece": (cal.adaptive_ece, ref_adaptive_ece),
    "classwise_ece": (cal.classwise_ece, ref_classwise_ece),
    "mce": (cal.max_calibration_error, ref_mce),
    "kce": (cal.kernel_calibration_error, ref_kce),
    "accuracy": (cal.accuracy, ref_accuracy),
    "nll": (cal.nll, ref_nll),
    "brier": (cal.brier, ref_brier),
    "true_class_entropy": (cal.true_class_entropy, ref_true_class_entropy),
}


# ---------------------------------------------------------------- inputs


def one_hot_mix(conf, top, num_classes):
    """Rows with probability ``conf`` on class ``top`` and the rest spread evenly."""
    p = np.repeat(((1 - conf) / (num_classes - 1))[:, None], num_classes, axis=1)
    p[np.arange(len(conf)), top] = conf
    return p


N, K = 240, 4  # one shape for all multi-class cases, so each metric compiles once for them


def make_case(name, rng):
    if name == "random":
        p = rng.dirichlet(np.full(K, 0.3), size=N)
        y = rng.integers(0, K, N)
    elif name == "ties":
        # Repeated rows (tied confidences, mixed correctness) and rows whose top two entries tie.
        base = rng.dirichlet(np.ones(K), size=9)
        tied = np.array([[0.4, 0.4, 0.1, 0.1], [0.3, 0.3, 0.3, 0.1], [0.25] * 4])
        p = np.concatenate([np.repeat(base, 20, axis=0), np.repeat(tied, 20, axis=0)])
        y = rng.integers(0, K, N)
    elif name == "bin_edges":
        # Top-label confidences exactly on the edges k/15 >= 1/2 (so they are the maximum).
        conf = rng.integers(8, M + 1, N) / M
        top = rng.integers(0, K, N)
        p = np.zeros((N, K))
        p[np.arange(N), top] = conf
        p[np.arange(N), (top + 1) % K] = 1 - conf
        y = np.where(rng.random(N) < 0.6, top, (top + 2) % K)
    elif name == "all_correct":
        p = rng.dirichlet(np.ones(K), size=N)
        y = p.argmax(1)
    elif name == "all_wrong":
        p = rng.dirichlet(np.ones(K), size=N)
        y = (p.argmax(1) + 1) % K
    elif name == "one_class":
        p = rng.dirichlet(np.ones(K), size=N)
        y = np.zeros(N, int)
    elif name == "binary":
        p1 = rng.random(N)
        p = np.stack([1 - p1, p1], axis=1)
        y = (rng.random(N) < p1**2).astype(int)
    else:
        raise AssertionError(name)
    return p, y


CASES = ["random", "ties", "bin_edges", "all_correct", "all_wrong", "one_class", "binary"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("metric", sorted(PROB_METRICS))
def test_metric_matches_numpy_reference(case, metric):
    rng = np.random.default_rng(CASES.index(case))
    p, y = make_case(case, rng)
    if metric == "nll" and case == "bin_edges":
        p = 0.98 * p + 0.02 / p.shape[1]  # log 0 is not a number to compare with
    fn, ref = PROB_METRICS[metric]
    got = fn(jnp.asarray(p), jnp.asarray(y))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), ref(p, y, np.ones(len(y))), rtol=1e-6, atol=1e-9)


def test_reference_cases_are_adversarial():
    """The edge case really puts confidences on edges; the tie case really has argmax ties."""
    p, _ = make_case("bin_edges", np.random.default_rng(2))
    assert set(p.max(1) * M) == set(range(8, M + 1))
    p, _ = make_case("ties", np.random.default_rng(1))
    assert np.any(np.sort(p, axis=1)[:, -1] == np.sort(p, axis=1)[:, -2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_edge_confidence_lands_in_bin_below_edge(dtype):
    conf = np.array([dtype(k / M) for k in range(1, M + 1)] + [dtype(0)])
    bins = np.asarray(cal.equal_width_bins(jnp.asarray(conf), M))
    np.testing.assert_array_equal(bins, list(range(M)) + [0])  # 0-based: k/15 -> bin k (1-based)
    np.testing.assert_array_equal(bins[:M] + 1, [ref_width_bin(c, M) for c in conf[:M]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ece_on_edges_uses_lower_bin(dtype):
    """Per edge k: a wrong example at k/15 plus a right one at the centre of bin k (its bin if
    (lo, hi]) and a wrong one at the centre of bin k+1; the two conventions give different ECEs."""
    for k in range(1, M):
        confs = np.array([k / M, (k - 0.5) / M, (k + 0.5) / M], dtype)
        correct = np.array([0.0, 1.0, 0.0])
        p = one_hot_mix(confs, np.zeros(3, int), 100).astype(dtype)
        y = np.where(correct == 1, 0, 1)
        got = float(cal.ece(jnp.asarray(p), jnp.asarray(y), M))
        c = confs.astype(np.float64)
        lower_bin = abs(c[0] + c[1] - 1) + c[2]  # edge example shares bin k with the right one
        upper_bin = (1 - c[1]) + c[0] + c[2]  # edge example in bin k+1 with the wrong one
        assert abs(lower_bin - upper_bin) > 0.05
        np.testing.assert_allclose(got * 3, lower_bin, rtol=1e-5, err_msg=f"edge {k}")


def test_confidence_one_goes_to_last_bin_and_every_example_counts_once():
    p = one_hot_mix(np.array([1.0, 1.0, 0.0 + 1 / 3, 0.5]), np.array([0, 1, 2, 0]), 3)
    y = jnp.array([0, 2, 2, 1])
    stats = cal.bin_statistics(jnp.asarray(p), y, M)
    assert float(stats.counts.sum()) == 4
    assert float(stats.counts[-1]) == 2


def test_classwise_ece_chunks_agree_with_reference(monkeypatch):
    # Chunks of 7 rows over 100 rows: 15 chunks, the last shifted back to overlap the previous one.
    # (100 rows is a shape no other test uses, so the jit cache cannot serve an unchunked trace.)
    monkeypatch.setattr(metrics_module, "_CLASSWISE_CHUNK_ELEMENTS", 7 * K)
    rng = np.random.default_rng(7)
    p, y = make_case("random", rng)
    p, y = p[:100], y[:100]
    w = rng.integers(0, 3, 100).astype(float)
    got = cal.classwise_ece(jnp.asarray(p), jnp.asarray(y), mask=jnp.asarray(w))
    np.testing.assert_allclose(float(got), ref_classwise_ece(p, y, w), rtol=1e-6)


def test_adaptive_bins_hold_equal_mass():
    n = 15 * 13 + 4
    p = one_hot_mix(np.random.default_rng(3).uniform(0.2, 1.0, n), np.zeros(n, int), 4)
    conf = jnp.sort(jnp.asarray(p.max(1)))
    bins = np.asarray(jax.jit(cal.binning.equal_mass_bins_sorted, static_argnums=2)(conf, jnp.ones(n), M))
    counts = np.bincount(bins, minlength=M)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("metric", sorted(PROB_METRICS))
def test_padding_with_zero_mask_gives_unpadded_value(metric):
    rng = np.random.default_rng(11)
    p, y = make_case("random", rng)
    fn, _ = PROB_METRICS[metric]
    pad_p = rng.dirichlet(np.full(K, 0.2), size=37)
    pad_y = rng.integers(0, K, 37)
    padded_p, padded_y = np.concatenate([p, pad_p]), np.concatenate([y, pad_y])
    mask = np.concatenate([np.ones(len(y)), np.zeros(37)])
    perm = rng.permutation(len(mask))  # padding interleaved, not only at the end
    expected = fn(jnp.asarray(p), jnp.asarray(y))
    got = fn(jnp.asarray(padded_p[perm]), jnp.asarray(padded_y[perm]), mask=jnp.asarray(mask[perm]))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("metric", sorted(PROB_METRICS))
def test_fractional_and_integer_weights_match_weighted_reference(metric):
    rng = np.random.default_rng(5)
    p, y = make_case("random", rng)
    w = rng.integers(0, 4, N) * rng.choice([0.5, 1.0], N)
    fn, ref = PROB_METRICS[metric]
    got = fn(jnp.asarray(p), jnp.asarray(y), mask=jnp.asarray(w))
    np.testing.assert_allclose(float(got), ref(p, y, w), rtol=1e-6, atol=1e-9)


def test_metrics_inline_in_a_callers_jit_and_trace_once():
    rng = np.random.default_rng(3)
    p, y = make_case("random", rng)
    for name, (fn, _) in PROB_METRICS.items():
        chex.clear_trace_counter()
        jitted = jax.jit(chex.assert_max_traces(lambda q, labels, fn=fn: fn(q, labels), n=1))
        for seed in range(2):
            q = jnp.asarray(np.random.default_rng(seed).dirichlet(np.ones(K), size=N))
            labels = jnp.asarray(y)
            np.testing.assert_allclose(float(jitted(q, labels)), float(fn(q, labels)), rtol=1e-12, err_msg=name)


def test_bad_arguments_raise_value_error():
    p, y = jnp.ones((4, 3)) / 3, jnp.zeros(4, int)
    with pytest.raises(ValueError, match="shape"):
        cal.ece(p[0], y)
    with pytest.raises(ValueError, match="labels"):
        cal.ece(p, y[:3])
    with pytest.raises(ValueError, match="integer"):
        cal.ece(p, y.astype(float))
    with pytest.raises(ValueError, match="num_bins"):
        cal.ece(p, y, 0)
    with pytest.raises(ValueError, match="mask"):
        cal.ece(p, y, mask=jnp.ones(5))
    with pytest.raises(ValueError, match="bandwidth"):
        cal.kernel_calibration_error(p, y, bandwidth=0.001)
