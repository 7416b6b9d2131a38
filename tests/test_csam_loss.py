"""CSAM loss (eq. 4), its reweighting of other per-example losses (FL+CSAM, Table S15) and CSAM
steps against NumPy float64 references with hand-written gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from sam_jax import optim
from sam_jax.losses import (
    LOSSES,
    PER_EXAMPLE_LOSSES,
    cross_entropy,
    csam_descent_loss,
    csam_loss,
    get_loss,
    get_per_example_loss,
)
from sam_jax.losses.classification import masked_mean

pytestmark = pytest.mark.usefixtures("float64")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def numpy_csam(logits, labels, gamma, stop_gradient_weight=False, mask=None) -> tuple[float, np.ndarray]:
    """Eq. (4) averaged over the (masked) batch, and its gradient w.r.t. the logits, by hand.

    With ``w = (1 + p)^(-gamma)`` and ``dp/dz = p (e_y - P)``:
    ``d(-w log p)/dz = w (P - e_y) + gamma (1 + p)^(-gamma - 1) p log(p) (e_y - P)``; the second
    term is dropped when the weight is a constant (stop-gradient) or ``p <= 1/2`` (``w = 1``).
    """
    probs = softmax(logits)
    onehot = np.eye(logits.shape[1])[labels]
    p = probs[np.arange(len(labels)), labels]
    confident = p > 0.5
    weight = np.where(confident, (1.0 + p) ** -gamma, 1.0)
    per_example = -weight * np.log(p)
    dz = weight[:, None] * (probs - onehot)
    if not stop_gradient_weight:
        through_weight = np.where(confident, gamma * (1.0 + p) ** (-gamma - 1) * p * np.log(p), 0.0)
        dz += through_weight[:, None] * (onehot - probs)
    example_weight = np.ones(len(labels)) if mask is None else mask.astype(float)
    example_weight = example_weight / example_weight.sum()
    return float(per_example @ example_weight), dz * example_weight[:, None]


def make_logits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = 3.0 * rng.normal(size=(16, 4))
    labels = rng.integers(0, 4, size=16)
    return logits, labels


class CsamLossTest(parameterized.TestCase):
    @parameterized.product(gamma=(0.0, 0.5, 1.0, 2.0, 3.0), stop_gradient_weight=(False, True), masked=(False, True))
    def test_value_and_gradient_match_numpy(self, gamma, stop_gradient_weight, masked):
        logits, labels = make_logits()
        mask = (np.arange(16) % 3 != 0).astype(np.float64) if masked else None
        p = softmax(logits)[np.arange(16), labels]
        self.assertTrue(np.any(p > 0.5) and np.any(p <= 0.5), msg="both branches of eq. (4) must be exercised")
        expected_value, expected_grad = numpy_csam(logits, labels, gamma, stop_gradient_weight, mask)
        value, grad = jax.value_and_grad(csam_loss)(
            jnp.asarray(logits),
            jnp.asarray(labels),
            gamma,
            stop_gradient_weight=stop_gradient_weight,
            mask=None if mask is None else jnp.asarray(mask),
        )
        np.testing.assert_allclose(value, expected_value, rtol=1e-10)
        np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)

    def test_threshold_is_inclusive_at_one_half(self):
        logits = jnp.array([[0.0, 0.0], [1e-3, 0.0], [-1e-3, 0.0]])
        labels = jnp.array([0, 0, 0])
        per_example = [float(csam_loss(logits[i : i + 1], labels[i : i + 1], 2.0)) for i in range(3)]
        p = jax.nn.softmax(logits)[:, 0]
        np.testing.assert_allclose(per_example[0], np.log(2.0), rtol=1e-12)  # p = 1/2 exactly: plain CE
        np.testing.assert_allclose(per_example[1], -((1 + p[1]) ** -2.0) * np.log(p[1]), rtol=1e-12)
        np.testing.assert_allclose(per_example[2], -np.log(p[2]), rtol=1e-12)

    def test_gamma_zero_is_cross_entropy(self):
        logits, labels = make_logits(1)
        np.testing.assert_allclose(csam_loss(logits, labels, 0.0), cross_entropy(logits, labels), rtol=1e-12)

    @parameterized.parameters(-0.1, float("nan"), float("inf"))
    def test_negative_or_non_finite_gamma_raises(self, gamma):
        with self.assertRaisesRegex(ValueError, r"gamma must be finite and >= 0.*Theorem 3.*Figure S6"):
            csam_loss(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), gamma)

    def test_csam_step_ascends_on_cross_entropy_and_descends_on_eq4(self):
        """Algorithm 1 of Tan et al. (2025, arXiv:2505.23866) on a linear softmax model, two steps."""
        rng = np.random.default_rng(2)
        x, labels = rng.normal(size=(16, 5)), rng.integers(0, 4, size=16)
        params = {"w": 2.0 * rng.normal(size=(5, 4)), "b": rng.normal(size=4)}
        gamma, rho, learning_rate = 1.0, 0.5, 0.2

        def numpy_grads(params, csam):
            logits = x @ params["w"] + params["b"]
            dz = numpy_csam(logits, labels, gamma)[1] if csam else (softmax(logits) - np.eye(4)[labels]) / 16
            return {"w": x.T @ dz, "b": dz.sum(axis=0)}

        expected = {k: v.copy() for k, v in params.items()}
        for _ in range(2):
            g = numpy_grads(expected, csam=False)
            norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
            descent = numpy_grads({k: expected[k] + rho * g[k] / norm for k in g}, csam=True)
            expected = {k: expected[k] - learning_rate * descent[k] for k in expected}

        def logits_fn(p):
            return jnp.asarray(x) @ p["w"] + p["b"]

        ce_grad = jax.grad(lambda p: cross_entropy(logits_fn(p), labels))
        csam_grad = jax.grad(lambda p: csam_loss(logits_fn(p), labels, gamma))
        tx = optim.sam(optax.sgd(learning_rate), rho)

        @jax.jit
        def step(params, state):
            updates, state = tx.update(ce_grad(params), state, params, grad_fn=csam_grad)
            return optax.apply_updates(params, updates), state

        ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
        for _ in range(2):
            ours, state = step(ours, state)
        chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_masked_mean_is_the_weighted_mean_with_an_empty_set_rule():
    values = jnp.array([1.0, 2.0, 4.0, jnp.inf])
    # Weight-0 entries do not enter, even an inf one; fractional weights give the weighted mean.
    np.testing.assert_allclose(masked_mean(values, jnp.array([1.0, 0.0, 1.0, 0.0])), 2.5)
    np.testing.assert_allclose(masked_mean(values, jnp.array([0.25, 0.25, 0.0, 0.0])), 1.5)
    np.testing.assert_allclose(masked_mean(values[:3]), 7.0 / 3.0)
    # An all-zero mask gives 0 (not NaN) and a finite gradient.
    empty = jnp.zeros(3)
    assert float(masked_mean(values[:3], empty)) == 0.0
    chex.assert_tree_all_finite(jax.grad(lambda v: masked_mean(v, empty))(values[:3]))
    # The losses reduce with it: a padded batch gives the unpadded value.
    logits = jnp.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [9.0, 9.0, 9.0]])
    labels = jnp.array([0, 2, 1])
    np.testing.assert_allclose(
        cross_entropy(logits, labels, jnp.array([1, 1, 0])), cross_entropy(logits[:2], labels[:2]), rtol=1e-12
    )


# Hyper-parameters away from the defaults where a loss has any, with margins small enough that the
# margin penalties are active for logits of scale 3.
PER_EXAMPLE_HPARAMS = {
    "label_smoothing": {"smoothing": 0.2},
    "focal": {"gamma": 2.0},
    "dual_focal": {"gamma": 2.0},
    "mbls": {"margin": 2.0, "weight": 0.3},
    "acls": {"pos_lambda": 0.5, "neg_lambda": 0.2, "alpha": 0.3, "margin": 1.0},
    "cpc": {"lambda_bdc": 0.3, "lambda_bec": 0.5},
    "confidence_penalty": {"weight": 0.3},
}


@pytest.mark.parametrize("name", PER_EXAMPLE_LOSSES)
def test_per_example_losses_average_to_the_batch_loss(name):
    logits, labels = map(jnp.asarray, make_logits(1))
    mask = jnp.asarray((np.arange(16) % 3 != 0).astype(np.float64))
    hparams = PER_EXAMPLE_HPARAMS.get(name, {})
    per_example = get_per_example_loss(name, **hparams)(logits, labels)
    assert per_example.shape == (16,)
    np.testing.assert_allclose(
        masked_mean(per_example, mask), get_loss(name, **hparams)(logits, labels, mask), rtol=1e-12
    )


@pytest.mark.parametrize("name", sorted(set(LOSSES) - set(PER_EXAMPLE_LOSSES)))
def test_csam_over_a_loss_without_per_example_form_is_rejected(name):
    assert name in {"mmce", "mdca", "adafocal", "crl", "balcal", "csam"}
    with pytest.raises(ValueError, match=rf"{name!r} is not a mean of per-example terms.*not defined"):
        csam_descent_loss(name, 1.0)


def test_csam_over_cross_entropy_is_eq4_exactly():
    logits, labels = map(jnp.asarray, make_logits(3))
    loss = csam_descent_loss("cross_entropy", 1.5)
    assert float(loss(logits, labels)) == float(csam_loss(logits, labels, 1.5))
    chex.assert_trees_all_equal(jax.grad(loss)(logits, labels), jax.grad(csam_loss)(logits, labels, 1.5))


def numpy_focal_csam(logits, labels, focal_gamma, gamma, mask=None) -> tuple[float, np.ndarray]:
    """FL+CSAM's descent loss, ``w(p) * (-(1 - p)^g log p)`` averaged over the batch, and its logit gradient.

    ``d(focal)/dz = [g (1 - p)^(g - 1) p log p - (1 - p)^g] (e_y - P)``; with ``w = (1 + p)^(-gamma)``
    for ``p > 1/2`` (else 1), ``d(w focal)/dz = w d(focal)/dz - gamma (1 + p)^(-gamma - 1) p focal (e_y - P)``.
    """
    probs = softmax(logits)
    onehot = np.eye(logits.shape[1])[labels]
    p = probs[np.arange(len(labels)), labels]
    focal = -((1.0 - p) ** focal_gamma) * np.log(p)
    d_focal = focal_gamma * (1.0 - p) ** (focal_gamma - 1) * p * np.log(p) - (1.0 - p) ** focal_gamma
    confident = p > 0.5
    weight = np.where(confident, (1.0 + p) ** -gamma, 1.0)
    d_weight = np.where(confident, -gamma * (1.0 + p) ** (-gamma - 1) * p, 0.0)
    dz = (weight * d_focal + d_weight * focal)[:, None] * (onehot - probs)
    example_weight = np.ones(len(labels)) if mask is None else mask.astype(float)
    example_weight = example_weight / example_weight.sum()
    return float((weight * focal) @ example_weight), dz * example_weight[:, None]


@pytest.mark.parametrize("masked", [False, True])
def test_focal_csam_value_and_gradient_match_numpy(masked):
    logits, labels = make_logits(4)
    mask = (np.arange(16) % 4 != 1).astype(np.float64) if masked else None
    p = softmax(logits)[np.arange(16), labels]
    assert np.any(p > 0.5) and np.any(p <= 0.5), "both branches of eq. (4) must be exercised"
    expected_value, expected_grad = numpy_focal_csam(logits, labels, 2.0, 1.0, mask)
    loss = csam_descent_loss("focal", 1.0, {"gamma": 2.0})
    value, grad = jax.value_and_grad(loss)(
        jnp.asarray(logits), jnp.asarray(labels), None if mask is None else jnp.asarray(mask)
    )
    np.testing.assert_allclose(value, expected_value, rtol=1e-10)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_fl_csam_step_from_the_registry_matches_numpy():
    """FL+CSAM (Table S15) as the registry builds it for ``optimizer.name=csam, loss.name=focal``:
    the ascent on focal loss, the descent on eq. (4)'s reweighting of focal loss at the perturbed
    weights, SGD with momentum and weight decay at the unperturbed weights; two steps."""
    rng = np.random.default_rng(5)
    x, labels = rng.normal(size=(16, 5)), rng.integers(0, 4, size=16)
    params = {"w": 2.0 * rng.normal(size=(5, 4)), "b": rng.normal(size=4)}
    focal_gamma, gamma, rho, learning_rate, momentum, weight_decay = 2.0, 1.0, 0.5, 0.2, 0.9, 1e-2

    def numpy_grads(params, descent):
        logits = x @ params["w"] + params["b"]
        probs = softmax(logits)
        p = probs[np.arange(16), labels]
        if descent:
            assert np.any(p > 0.5) and np.any(p <= 0.5), "both branches of eq. (4) must be exercised"
            dz = numpy_focal_csam(logits, labels, focal_gamma, gamma)[1]
        else:  # the plain focal gradient is the reweighted one with gamma = 0
            dz = numpy_focal_csam(logits, labels, focal_gamma, 0.0)[1]
        return {"w": x.T @ dz, "b": dz.sum(axis=0)}

    expected = {k: v.copy() for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in params.items()}
    for _ in range(2):
        g = numpy_grads(expected, descent=False)
        norm = np.sqrt(sum(np.sum(v**2) for v in g.values()))
        descent = numpy_grads({k: expected[k] + rho * g[k] / norm for k in g}, descent=True)
        trace = {k: momentum * trace[k] + descent[k] + weight_decay * expected[k] for k in expected}
        expected = {k: expected[k] - learning_rate * trace[k] for k in expected}

    blocks = optim.hparam_blocks(
        {"csam": {"rho": rho, "gamma": gamma}, "sgd": {"momentum": momentum, "weight_decay": weight_decay}}
    )
    context = optim.BuildContext(optax.constant_schedule(learning_rate), 16, 0, blocks, 16)
    tx = optim.build_optimizer("csam", context)
    descent_loss = optim.get_optimizer_spec("csam").descent_loss(blocks["csam"], "focal", {"gamma": focal_gamma})

    def logits_fn(p):
        return jnp.asarray(x) @ p["w"] + p["b"]

    ascent_grad = jax.grad(lambda p: get_loss("focal", gamma=focal_gamma)(logits_fn(p), labels))
    descent_grad = jax.grad(lambda p: descent_loss(logits_fn(p), labels))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(ascent_grad(params), state, params, grad_fn=descent_grad)
        return optax.apply_updates(params, updates), state

    ours, state = jax.tree.map(jnp.asarray, params), tx.init(params)
    for _ in range(2):
        ours, state = step(ours, state)
    chex.assert_trees_all_close(ours, expected, rtol=1e-10, atol=1e-12)
