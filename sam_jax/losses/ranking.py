"""CRL: cross-entropy plus the correctness ranking loss over a per-example correctness history.

The history (``CorrectnessHistory``) counts, for every training example, how often it was seen and
how often it was classified correctly. ``crl_loss`` reads it; ``crl_update`` adds the current batch
after every training step. Both are pure and jit-safe; the history checkpoints with the train state.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import _true_class_log_prob, masked_mean
from sam_jax.losses.hparams import check
from sam_jax.losses.stateful import StatefulLoss, keep_state, model_logits
from sam_jax.losses.validation import check_labels


class CorrectnessHistory(NamedTuple):
    """Per-example training history of CRL."""

    correct: jax.Array  # [N] float32: number of steps in which example i was classified correctly
    seen: jax.Array  # [N] float32: number of steps in which example i was in the batch


def crl_init(num_examples: int) -> CorrectnessHistory:
    """An empty history for a training set of ``num_examples`` examples."""
    zeros = jnp.zeros((num_examples,), jnp.float32)
    return CorrectnessHistory(zeros, zeros)


def correctness_rate(history: CorrectnessHistory, indices: jax.Array) -> jax.Array:
    """``c_i``: the fraction of examinations in which example ``indices[i]`` was correct (0 if never seen)."""
    return history.correct[indices] / jnp.maximum(history.seen[indices], 1.0)


def crl_loss(
    logits: jax.Array,
    labels: jax.Array,
    history: CorrectnessHistory,
    *,
    indices: jax.Array,
    rank_weight: float = 1.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """CE + ``rank_weight * mean_i max(0, -g(c_i, c_j) (kappa_i - kappa_j) + |c_i - c_j|)``.

    Each example ``i`` is paired with the next one in the batch, ``j = i + 1 mod B`` (the
    authors' pairing). ``kappa`` is the top-1 softmax confidence, ``c`` the correctness rate from
    the history *before* this step and ``g = sign(c_i - c_j)``: an example that was right more
    often must be more confident by at least the gap of the rates. Assumption: ``c_i`` is the
    raw correct/seen rate of the paper's definition, not the code's min-max normalised count.
    ``rank_weight = 1`` is the paper's default.

    References:
      Moon, Kim, Shin and Hwang, 2020, "Confidence-Aware Learning for Deep Neural Networks",
      arXiv:2007.01458 (the correctness ranking loss).

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      history: the ``CorrectnessHistory`` before this step.
      indices: ``[B]`` integer positions of the batch's examples in the training set.
      rank_weight: ``lambda >= 0``.
      mask: optional ``[B]`` weights; a pair counts only when both examples are real.

    Returns:
      Scalar (masked) loss.
    """
    check_labels(labels, logits.shape[-1], mask=mask, where="crl")
    log_probs, log_p = _true_class_log_prob(logits, labels)
    confidence = jnp.exp(jnp.max(log_probs, axis=-1))
    rate = correctness_rate(history, indices).astype(confidence.dtype)
    rate_next, confidence_next = jnp.roll(rate, -1), jnp.roll(confidence, -1)
    ranking = jax.nn.relu(-jnp.sign(rate - rate_next) * (confidence - confidence_next) + jnp.abs(rate - rate_next))
    pair_mask = None if mask is None else mask * jnp.roll(mask, -1)
    return masked_mean(-log_p, mask) + rank_weight * masked_mean(ranking, pair_mask)


def crl_update(
    history: CorrectnessHistory,
    logits: jax.Array,
    labels: jax.Array,
    *,
    indices: jax.Array,
    mask: jax.Array | None = None,
) -> CorrectnessHistory:
    """Adds one training batch to the history (call after every step, with that step's logits).

    Args:
      history: the current history.
      logits: ``[B, K]`` the step's training logits (the clean forward pass).
      labels: ``[B]`` labels.
      indices: ``[B]`` positions of the examples in the training set.
      mask: optional ``[B]`` weights; padding rows (0) are not recorded.

    Returns:
      The updated history.
    """
    weight = jnp.ones(labels.shape, jnp.float32) if mask is None else (mask > 0).astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32) * weight
    return CorrectnessHistory(history.correct.at[indices].add(correct), history.seen.at[indices].add(weight))


def crl(rank_weight: float = 1.0) -> StatefulLoss:
    """CRL as a ``StatefulLoss``: ``step_update`` after every step with the batch's ``indices``.

    Raises:
      ValueError: when ``rank_weight`` is negative.
    """
    check("crl", rank_weight=rank_weight)

    def loss(logits, labels, state, *, mask=None, indices=None):
        return crl_loss(logits, labels, state, indices=indices, rank_weight=rank_weight, mask=mask)

    def step_update(state, logits, labels, *, mask=None, indices=None):
        return crl_update(state, logits, labels, indices=indices, mask=mask)

    return StatefulLoss(
        lambda num_examples, num_classes: crl_init(num_examples), loss, step_update, keep_state, None, model_logits
    )
