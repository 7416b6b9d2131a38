"""Mixup and MIT-L batch transforms: determinism from the key, the mixing formulas, the decoupling."""

import jax
import numpy as np
import pytest

from sam_jax import losses

pytestmark = pytest.mark.usefixtures("float64")


def make_batch(batch_size=8, num_classes=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch_size, 5)), rng.integers(0, num_classes, size=batch_size)


MASK = np.array([1, 1, 1, 1, 1, 1, 0, 0.0])
MIXUP = jax.jit(losses.mixup, static_argnames="alpha")
MIT_MIX = jax.jit(losses.mit_mix, static_argnames=("alpha", "margin"))


def test_mixup_is_a_deterministic_function_of_the_key():
    x, y = make_batch()
    first, again = MIXUP(jax.random.PRNGKey(3), x, y, mask=MASK), MIXUP(jax.random.PRNGKey(3), x, y, mask=MASK)
    other = MIXUP(jax.random.PRNGKey(4), x, y, mask=MASK)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert float(first.lam) != float(other.lam)


def test_mixup_mixes_each_example_with_the_partner_of_its_second_label():
    x, y = make_batch()
    mask = MASK
    batch = MIXUP(jax.random.PRNGKey(5), x, y, mask=mask)
    lam = float(batch.lam)
    assert 0.0 <= lam <= 1.0
    partner = (np.asarray(batch.images) - lam * x) / (1 - lam)
    perm = [int(np.argmin(np.abs(x - row).sum(-1))) for row in partner]
    assert sorted(perm) == list(range(8))
    np.testing.assert_allclose(partner, x[perm], atol=1e-9)
    np.testing.assert_array_equal(batch.labels_b, y[perm])
    np.testing.assert_array_equal(batch.mask, mask * mask[perm])


def test_mixup_loss_with_cross_entropy_is_cross_entropy_to_the_mixed_label():
    x, y = make_batch()
    batch = MIXUP(jax.random.PRNGKey(6), x, y, mask=np.ones(8))
    logits = np.random.default_rng(1).normal(size=(8, 3))
    target = float(batch.lam) * np.eye(3)[y] + (1 - float(batch.lam)) * np.eye(3)[np.asarray(batch.labels_b)]
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        losses.mixup_loss(losses.cross_entropy, logits, batch), -(target * log_probs).sum(-1).mean(), rtol=1e-12
    )


@pytest.mark.parametrize("margin", [0.0, 0.6])
def test_mit_mix_draws_weights_on_both_sides_of_one_half(margin):
    x, y = make_batch()
    for seed in range(3):
        batch = MIT_MIX(jax.random.PRNGKey(seed), x, y, alpha=1.0, margin=margin)
        assert float(batch.lam_1) >= 0.5 >= float(batch.lam_2)
        assert float(batch.lam_1) - float(batch.lam_2) > margin
        jax.tree.map(
            np.testing.assert_array_equal, batch, MIT_MIX(jax.random.PRNGKey(seed), x, y, alpha=1.0, margin=margin)
        )


def test_mit_decoupling_recovers_the_outputs_of_a_linear_model():
    """For f(x) = x W + b the decoupled outputs of the two mixtures are exactly f(x_a), f(x_b)."""
    x, y = make_batch()
    rng = np.random.default_rng(2)
    weights, bias = rng.normal(size=(5, 3)), rng.normal(size=3)
    batch = MIT_MIX(jax.random.PRNGKey(7), x, y, alpha=1.0, margin=0.6)
    model = lambda images: images @ weights + bias
    logits_a, logits_b = losses.mit_decouple(model(batch.images_1), model(batch.images_2), batch.lam_1, batch.lam_2)
    np.testing.assert_allclose(logits_a, model(x), rtol=1e-10, atol=1e-12)
    lam_1 = float(batch.lam_1)
    partner_images = (np.asarray(batch.images_1) - lam_1 * x) / (1 - lam_1)
    np.testing.assert_allclose(logits_b, model(partner_images), rtol=1e-10, atol=1e-12)
    partner = np.asarray(batch.labels_b)
    expected = 0.5 * (losses.cross_entropy(model(x), y) + losses.cross_entropy(logits_b, partner))
    np.testing.assert_allclose(
        losses.mit_loss(losses.cross_entropy, model(batch.images_1), model(batch.images_2), batch), expected, rtol=1e-10
    )


@pytest.mark.parametrize(
    "fn,kwargs,bad",
    [
        (losses.mixup, {"alpha": 0.0}, "alpha"),
        (losses.mit_mix, {"alpha": -1.0}, "alpha"),
        (losses.mit_mix, {"margin": 1.0}, "margin"),
    ],
)
def test_bad_mixing_hyperparameters_raise(fn, kwargs, bad):
    x, y = make_batch()
    with pytest.raises(ValueError, match=bad):
        fn(jax.random.PRNGKey(0), x, y, **kwargs)
