"""One-vs-rest macro AUROC against scikit-learn's ``roc_auc_score(..., multi_class="ovr")``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sam_jax import calibration as cal

pytestmark = pytest.mark.usefixtures("float64")


def random_predictions(rng: np.random.Generator, n: int = 300, k: int = 5, ties: bool = False):
    """Softmax probabilities and labels drawn from them; with ``ties``, probabilities on a coarse grid."""
    z = 2.0 * rng.standard_normal((n, k))
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    if ties:  # one-decimal grid: many tied scores within each column
        probs = np.round(probs, 1)
        probs[:, -1] = 1.0 - probs[:, :-1].sum(1)
        probs = np.clip(probs, 0.0, 1.0)
        probs /= probs.sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > np.cumsum(probs, 1)).sum(1).clip(0, k - 1)
    return probs, labels


@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn_ovr_macro(ties):
    probs, labels = random_predictions(np.random.default_rng(0), ties=ties)
    assert len(np.unique(labels)) == probs.shape[1]
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    got = cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)


def test_masked_padding_rows_give_the_unpadded_value():
    rng = np.random.default_rng(1)
    probs, labels = random_predictions(rng)
    padding, padding_labels = random_predictions(rng, n=50)
    padded_probs, padded_labels = np.r_[probs, padding], np.r_[labels, padding_labels]
    mask = np.r_[np.ones(len(probs)), np.zeros(len(padding))]
    expected = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    got = cal.one_vs_rest_auroc(jnp.asarray(padded_probs), jnp.asarray(padded_labels), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    unpadded = cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), float(unpadded), rtol=1e-12)


def test_class_without_positives_is_left_out():
    """sklearn's ovr AUROC raises for such a class; compare with its binary AUROC of the other classes."""
    probs, labels = random_predictions(np.random.default_rng(2))
    present = (0, 1, 3, 4)
    merged = np.where(labels == 2, 0, labels)  # class 2 has no example
    expected = np.mean([roc_auc_score(merged == k, probs[:, k]) for k in present])
    got = cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.asarray(merged))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    mask = (labels != 2).astype(np.float64)  # class 2's examples all have weight 0
    expected = np.mean([roc_auc_score(labels == k, probs[:, k], sample_weight=mask) for k in present])
    got = cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.asarray(labels), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)


def test_undefined_when_only_one_class_is_present():
    probs, _ = random_predictions(np.random.default_rng(3), n=20)
    got = cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.zeros(20, jnp.int32))
    assert np.isnan(float(got))


def test_jit_equals_eager_and_input_checks():
    probs, labels = random_predictions(np.random.default_rng(4), ties=True)
    mask = jnp.asarray(np.random.default_rng(5).integers(0, 3, len(labels)), jnp.float64)
    eager = cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.asarray(labels), mask=mask)
    jitted = jax.jit(cal.one_vs_rest_auroc)(jnp.asarray(probs), jnp.asarray(labels), mask=mask)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-12)
    with pytest.raises(ValueError, match=r"one_vs_rest_auroc: expected predictions of shape \[N, K\]"):
        cal.one_vs_rest_auroc(jnp.asarray(probs[:, 0]), jnp.asarray(labels))
    with pytest.raises(ValueError, match="one_vs_rest_auroc"):
        cal.one_vs_rest_auroc(jnp.asarray(probs), jnp.asarray(labels + probs.shape[1]))
