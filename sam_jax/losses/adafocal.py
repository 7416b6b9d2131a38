"""AdaFocal: focal loss whose gamma, one per confidence bin, follows the validation calibration.

The state is an ``AdaFocalState``; ``adafocal_update`` runs once per epoch on the validation set's
logits (the paper's "previous-epoch validation" statistics) and ``adafocal_loss`` reads the state
on every training step. Both are pure and jit-safe, so the state checkpoints with the train state
and a resumed run continues bit-identically.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import _log_one_minus_true_prob, _true_class_log_prob, masked_mean
from sam_jax.losses.hparams import require
from sam_jax.losses.stateful import StatefulLoss, keep_state, model_logits
from sam_jax.losses.validation import check_labels


class AdaFocalState(NamedTuple):
    """Per-bin focal parameters of AdaFocal."""

    gamma: jax.Array  # [num_bins] gamma_b; >= 0: focal (1 - p)^gamma, < 0: inverse focal (1 + p)^|gamma|
    edges: jax.Array  # [num_bins + 1] bin edges over p_y: uniform at first, then validation equal-mass


def check_adafocal_hparams(
    num_bins: int, lam: float, gamma_initial: float, gamma_max: float, gamma_min: float, switch_point: float
) -> None:
    """Raises ``ValueError`` naming the first invalid AdaFocal hyper-parameter."""
    require("adafocal", "num_bins", num_bins, isinstance(num_bins, int) and num_bins >= 1, "an integer >= 1")
    require("adafocal", "lam", lam, lam >= 0, ">= 0")
    require("adafocal", "switch_point", switch_point, switch_point >= 0, ">= 0")
    require("adafocal", "gamma_max", gamma_max, gamma_max >= switch_point, ">= switch_point")
    require("adafocal", "gamma_min", gamma_min, gamma_min <= -switch_point, "<= -switch_point")
    require(
        "adafocal", "gamma_initial", gamma_initial, gamma_min <= gamma_initial <= gamma_max, "in [gamma_min, gamma_max]"
    )


def adafocal_init(num_bins: int = 15, gamma_initial: float = 1.0) -> AdaFocalState:
    """The state before any validation: ``gamma_initial`` in ``num_bins`` equal-width bins."""
    return AdaFocalState(
        jnp.full((num_bins,), gamma_initial, jnp.float32), jnp.linspace(0.0, 1.0, num_bins + 1, dtype=jnp.float32)
    )


def _bin_of(values: jax.Array, edges: jax.Array) -> jax.Array:
    """Bin ``b`` with ``edges[b] <= v < edges[b + 1]``, values outside going to the end bins."""
    return jnp.searchsorted(edges[1:-1], values, side="right")


def adafocal_loss(
    logits: jax.Array, labels: jax.Array, state: AdaFocalState, *, mask: jax.Array | None = None
) -> jax.Array:
    """Mean AdaFocal loss: ``-(1 - p_y)^g log p_y`` if ``g >= 0``, else ``-(1 + p_y)^|g| log p_y``.

    ``g = state.gamma[b]`` where ``b`` is the bin of ``p_y`` between ``state.edges`` (the bin
    choice carries no gradient; the weight is differentiated through, as in the authors' code).
    The authors sum over the batch; here it is the (masked) mean, like every loss in this package.

    References:
      Ghosh, Schaaf and Gormley, 2022, "AdaFocal: Calibration-aware Adaptive Focal Loss",
      arXiv:2211.11838 (the focal / inverse-focal loss).

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      state: the current ``AdaFocalState``.
      mask: optional ``[B]`` weights.

    Returns:
      Scalar (masked) mean loss.
    """
    check_labels(labels, logits.shape[-1], mask=mask, where="adafocal")
    _, log_p = _true_class_log_prob(logits, labels)
    p = jnp.exp(log_p)
    gamma = state.gamma.astype(log_p.dtype)[_bin_of(jax.lax.stop_gradient(p), state.edges)]
    focal_weight = jnp.exp(jnp.maximum(gamma, 0.0) * _log_one_minus_true_prob(logits, labels))
    inverse_weight = jnp.exp(jnp.maximum(-gamma, 0.0) * jnp.log1p(p))
    weight = jnp.where(gamma >= 0, focal_weight, inverse_weight)
    return masked_mean(-weight * log_p, mask)


def _equal_mass_edges(confidence: jax.Array, valid: jax.Array, num_bins: int) -> jax.Array:
    """Edges with ``num_bins`` bins of equal count over the valid confidences.

    Linear interpolation of the sorted valid confidences at positions ``linspace(0, n, B + 1)``
    (clamped to the last one), the adaptive binning of Mukhoti et al. that AdaFocal uses.
    """
    ordered = jnp.sort(jnp.where(valid, confidence, jnp.inf))
    count = jnp.sum(valid)
    position = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=confidence.dtype) * count
    below = jnp.minimum(jnp.floor(position).astype(jnp.int32), count - 1)
    above = jnp.minimum(below + 1, count - 1)
    fraction = position - jnp.floor(position)
    return ordered[below] + fraction * (ordered[above] - ordered[below])


def adafocal_update(
    state: AdaFocalState,
    val_logits: jax.Array,
    val_labels: jax.Array,
    *,
    val_mask: jax.Array | None = None,
    lam: float = 1.0,
    gamma_max: float = 20.0,
    gamma_min: float = -2.0,
    switch_point: float = 0.2,
) -> AdaFocalState:
    """One AdaFocal gamma update from the validation set (run at the end of every epoch).

    The validation top-1 confidences are split into ``num_bins`` equal-mass bins; with the gap
    ``E_b = mean confidence - accuracy`` of bin ``b`` (0 for an empty bin):

    ``gamma_b <- gamma_b * exp(lam * E_b)`` if ``gamma_b > 0`` else ``gamma_b * exp(-lam * E_b)``;
    a result with ``|gamma_b| < switch_point`` jumps to ``-switch_point`` (if positive) or
    ``+switch_point`` (if not), switching between focal and inverse-focal loss; finally
    ``gamma_b`` is clipped to ``[gamma_min, gamma_max]``. The new bin edges are the validation
    equal-mass edges. Defaults are the paper's.

    References:
      Ghosh, Schaaf and Gormley, 2022, "AdaFocal: Calibration-aware Adaptive Focal Loss",
      arXiv:2211.11838 (the gamma update and switching rule).

    Args:
      state: the current state.
      val_logits: ``[N, K]`` validation logits (eval mode, whole validation set).
      val_labels: ``[N]`` validation labels.
      val_mask: optional ``[N]`` weights (0 for padding rows).
      lam: update rate ``lambda >= 0``.
      gamma_max: upper clip of gamma.
      gamma_min: lower clip of gamma (negative: inverse focal allowed).
      switch_point: ``S_th``, the smallest ``|gamma|``.

    Returns:
      The updated ``AdaFocalState``.
    """
    check_labels(val_labels, val_logits.shape[-1], mask=val_mask, where="adafocal_update")
    num_bins = state.gamma.shape[0]
    dtype = jnp.promote_types(val_logits.dtype, jnp.float32)
    log_probs = jax.nn.log_softmax(val_logits.astype(dtype), axis=-1)
    confidence = jnp.exp(jnp.max(log_probs, axis=-1))
    correct = (jnp.argmax(log_probs, axis=-1) == val_labels).astype(dtype)
    valid = jnp.ones_like(correct, bool) if val_mask is None else val_mask > 0
    edges = _equal_mass_edges(confidence, valid, num_bins)
    bins = jnp.clip(jnp.searchsorted(edges[1:-1], confidence, side="left"), 0, num_bins - 1)
    member = jax.nn.one_hot(bins, num_bins, dtype=dtype) * valid[:, None]
    count = jnp.sum(member, axis=0)
    gap = (confidence - correct) @ member / jnp.maximum(count, 1.0)
    gamma = state.gamma * jnp.exp(jnp.where(state.gamma > 0, lam, -lam) * gap)
    gamma = jnp.where(jnp.abs(gamma) < switch_point, jnp.where(gamma > 0, -switch_point, switch_point), gamma)
    return AdaFocalState(
        jnp.clip(gamma, gamma_min, gamma_max).astype(state.gamma.dtype), edges.astype(state.edges.dtype)
    )


def adafocal(
    num_bins: int = 15,
    lam: float = 1.0,
    gamma_initial: float = 1.0,
    gamma_max: float = 20.0,
    gamma_min: float = -2.0,
    switch_point: float = 0.2,
) -> StatefulLoss:
    """AdaFocal as a ``StatefulLoss``: ``epoch_update`` on the validation split every epoch.

    Defaults are the paper's (15 bins, ``lambda = 1``, ``gamma_0 = 1``, ``gamma`` clipped to
    ``[-2, 20]``, ``S_th = 0.2``). ``step_update`` keeps the state.

    Raises:
      ValueError: naming the first invalid hyper-parameter.
    """
    check_adafocal_hparams(num_bins, lam, gamma_initial, gamma_max, gamma_min, switch_point)

    def loss(logits, labels, state, *, mask=None, indices=None):
        del indices
        return adafocal_loss(logits, labels, state, mask=mask)

    def epoch_update(state, logits, labels, *, mask=None):
        return adafocal_update(
            state,
            logits,
            labels,
            val_mask=mask,
            lam=lam,
            gamma_max=gamma_max,
            gamma_min=gamma_min,
            switch_point=switch_point,
        )

    return StatefulLoss(
        lambda num_examples, num_classes: adafocal_init(num_bins, gamma_initial),
        loss,
        keep_state,
        epoch_update,
        "validation",
        model_logits,
    )
