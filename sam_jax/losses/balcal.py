"""BalCAL: a learnable and a fixed simplex-ETF classifier, mixed by a calibration-driven weight.

The model has two heads on its features: an ordinary linear classifier ``z_lin`` and
``z_etf = normalise(h) @ M`` with a fixed simplex equiangular tight frame ``M``
(``sam_jax.models.simplex_etf``; the ``dual_head`` model); it outputs both, stacked as
``logits [B, 2, K]`` (head 0 linear, head 1 ETF). Training minimises
``lam * CE(z_lin) + (1 - lam) * CE(z_etf * s)`` with the per-class scale ``s`` of
:func:`balcal_class_scale`; predictions are ``lam * z_lin + (1 - lam) * z_etf``
(:func:`balcal_logits`). ``lam`` lives in ``BalcalState`` and is re-fitted once per epoch by
:func:`balcal_update` so that mean confidence matches ``delta`` times accuracy.

References:
  Ni, Zhao, Gao, Guo and Zha, 2025, "Balancing Two Classifiers via A Simplex ETF Structure for Model
  Calibration", arXiv:2504.10007.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import _true_class_log_prob, masked_mean
from sam_jax.losses.hparams import require
from sam_jax.losses.stateful import StatefulLoss, keep_state
from sam_jax.losses.validation import check_labels

BISECTION_TOLERANCE = 1e-4  # width of the lam bracket at which the authors stop bisecting


class BalcalState(NamedTuple):
    """The mixing weight of BalCAL."""

    lam: jax.Array  # scalar float32 in [0, 1]: weight of the linear head (1 - lam on the ETF head)


def check_balcal_hparams(delta: float, lambda_init: float) -> None:
    """Raises ``ValueError`` naming the first invalid BalCAL hyper-parameter."""
    require("balcal", "delta", delta, delta > 0, "> 0")
    require("balcal", "lambda_init", lambda_init, 0.0 <= lambda_init <= 1.0, "in [0, 1]")


def balcal_init(lambda_init: float = 0.8) -> BalcalState:
    """Initial state; ``lambda_init = 0.8`` is the authors' default."""
    return BalcalState(jnp.asarray(lambda_init, jnp.float32))


def balcal_class_scale(
    labels: jax.Array, num_classes: int, mask: jax.Array | None = None, dtype: jnp.dtype = jnp.float32
) -> jax.Array:
    """Per-class scale ``s_k = sqrt((n / u) / n_k)`` of the ETF logits for one batch, ``[K]``.

    ``n`` is the batch size, ``u`` the number of distinct labels in it and ``n_k`` the count of
    class ``k``; classes absent from the batch get ``s_k = 1``. It carries no gradient.
    """
    weight = jnp.ones(labels.shape, dtype) if mask is None else (mask > 0).astype(dtype)
    counts = weight @ jax.nn.one_hot(labels, num_classes, dtype=dtype)
    present = counts > 0
    per_class = jnp.sum(counts) / jnp.maximum(jnp.sum(present), 1)
    return jnp.where(present, jnp.sqrt(per_class / jnp.maximum(counts, 1.0)), 1.0)


def balcal_loss(
    logits: jax.Array, labels: jax.Array, state: BalcalState, *, mask: jax.Array | None = None
) -> jax.Array:
    """``lam * CE(z_lin) + (1 - lam) * CE(z_etf * s)`` for stacked ``logits [B, 2, K]``.

    Args:
      logits: ``[B, 2, K]``: the linear head's logits ``[:, 0]``, the ETF head's ``[:, 1]``.
      labels: ``[B]`` integer labels.
      state: the current ``BalcalState``.
      mask: optional ``[B]`` weights.

    Returns:
      Scalar (masked) mean loss.
    """
    check_labels(labels, logits.shape[-1], mask=mask, where="balcal")
    if logits.ndim != 3 or logits.shape[1] != 2:
        raise ValueError(f"balcal: logits must be [B, 2, K] (linear head, ETF head), got shape {logits.shape}.")
    scale = balcal_class_scale(labels, logits.shape[-1], mask, logits.dtype)
    _, log_p_linear = _true_class_log_prob(logits[:, 0], labels)
    _, log_p_etf = _true_class_log_prob(logits[:, 1] * scale, labels)
    lam = state.lam.astype(log_p_linear.dtype)
    return lam * masked_mean(-log_p_linear, mask) + (1.0 - lam) * masked_mean(-log_p_etf, mask)


def balcal_logits(logits: jax.Array, state: BalcalState) -> jax.Array:
    """The prediction logits ``lam * z_lin + (1 - lam) * z_etf`` of stacked ``logits [B, 2, K]``."""
    lam = state.lam.astype(logits.dtype)
    return lam * logits[:, 0] + (1.0 - lam) * logits[:, 1]


def _confidence_and_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    confidence = jnp.exp(jnp.max(log_probs, axis=-1))
    correct = (jnp.argmax(log_probs, axis=-1) == labels).astype(weights.dtype)
    return weights @ confidence, weights @ correct


def balcal_update(
    state: BalcalState, logits: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None, delta: float = 1.0
) -> BalcalState:
    """Re-fits ``lam`` once per epoch from the training set's stacked logits ``[N, 2, K]``.

    If the linear head alone is under-confident (``delta * accuracy > mean confidence``),
    ``lam = 1``. Otherwise ``lam`` is bisected on ``[0, 1]`` (until the bracket is ``1e-4`` wide,
    14 halvings) for ``delta * accuracy = mean confidence`` of the mixed logits, moving towards the
    linear head while the mix is under-confident; the visited ``lam`` with the smallest
    ``|delta * accuracy - confidence|`` is kept (the authors' code intends this but never updates
    its running minimum). Assumptions: the logits are a full eval-mode pass over the training set
    at the end of the epoch (the authors collect them during the epoch) and the ETF head is taken
    unscaled, as in prediction. ``delta = 1`` is the authors' default.

    Args:
      state: the current state.
      logits: ``[N, 2, K]`` stacked logits of the training set.
      labels: ``[N]`` labels.
      mask: optional ``[N]`` weights (0 for padding).
      delta: target ratio ``> 0`` of confidence to accuracy.

    Returns:
      The updated ``BalcalState``.
    """
    check_labels(labels, logits.shape[-1], mask=mask, where="balcal_update")
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    logits = logits.astype(dtype)
    weights = jnp.ones(labels.shape, dtype) if mask is None else mask.astype(dtype)
    weights = weights / jnp.maximum(jnp.sum(weights), 1.0)

    def mismatch(lam):
        confidence, accuracy = _confidence_and_accuracy(
            lam * logits[:, 0] + (1.0 - lam) * logits[:, 1], labels, weights
        )
        return delta * accuracy - confidence

    def halve(_, carry):
        left, right, best, best_gap = carry
        mid = 0.5 * (left + right)
        gap = mismatch(mid)
        better = jnp.abs(gap) < best_gap
        best, best_gap = jnp.where(better, mid, best), jnp.where(better, jnp.abs(gap), best_gap)
        left, right = jnp.where(gap > 0, mid, left), jnp.where(gap > 0, right, mid)
        return left, right, best, best_gap

    zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)
    linear_gap = mismatch(one)
    iterations = math.ceil(math.log2(1.0 / BISECTION_TOLERANCE))
    _, _, best, _ = jax.lax.fori_loop(0, iterations, halve, (zero, one, one, jnp.abs(linear_gap)))
    return BalcalState(jnp.where(linear_gap > 0, one, best).astype(state.lam.dtype))


def balcal(delta: float = 1.0, lambda_init: float = 0.8) -> StatefulLoss:
    """BalCAL as a ``StatefulLoss`` on stacked logits ``[B, 2, K]``.

    ``epoch_update`` on the train split every epoch; ``predict`` mixes the two heads.

    Raises:
      ValueError: naming the first invalid hyper-parameter.
    """
    check_balcal_hparams(delta, lambda_init)

    def loss(logits, labels, state, *, mask=None, indices=None):
        del indices
        return balcal_loss(logits, labels, state, mask=mask)

    def epoch_update(state, logits, labels, *, mask=None):
        return balcal_update(state, logits, labels, mask=mask, delta=delta)

    return StatefulLoss(
        lambda num_examples, num_classes: balcal_init(lambda_init),
        loss,
        keep_state,
        epoch_update,
        "train",
        balcal_logits,
    )
