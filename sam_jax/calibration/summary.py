"""All calibration metrics of one evaluation in a single jitted call (for the train loop)."""

import functools

import jax

from sam_jax import losses
from sam_jax.calibration import _common
from sam_jax.calibration.entropy import true_class_entropy
from sam_jax.calibration.kernel import kernel_calibration_error
from sam_jax.calibration.margins import margin_moment, margins
from sam_jax.calibration.metrics import (
    accuracy,
    adaptive_ece,
    brier,
    classwise_ece,
    ece,
    max_calibration_error,
    mean_confidence,
)
from sam_jax.calibration.scaling import fit_temperature
from sam_jax.losses.classification import masked_mean


@functools.partial(jax.jit, static_argnames=("num_bins", "loss"))
def _metrics(logits, labels, mask, val_logits, val_labels, val_mask, num_bins, loss):
    probs = jax.nn.softmax(logits.astype(_common.float_dtype(logits)), axis=-1)
    weights = _common.example_weights(mask, labels.shape[0], probs.dtype)
    results = {
        "loss": losses.get_loss(loss)(logits, labels, mask),
        "accuracy": accuracy(probs, labels, mask=mask),
        "nll": losses.cross_entropy(logits, labels, mask),
        "brier": brier(probs, labels, mask=mask),
        "ece": ece(probs, labels, num_bins, mask=mask),
        "adaptive_ece": adaptive_ece(probs, labels, num_bins, mask=mask),
        "classwise_ece": classwise_ece(probs, labels, num_bins, mask=mask),
        "mce": max_calibration_error(probs, labels, num_bins, mask=mask),
        "kce": kernel_calibration_error(probs, labels, mask=mask),
        "mean_confidence": mean_confidence(probs, mask=mask),
        "margin_moment": margin_moment(logits, labels, mask=mask),
        "mean_margin": masked_mean(margins(logits, labels), weights),
        "true_class_entropy": true_class_entropy(probs, labels, mask=mask),
    }
    if val_logits is not None:
        temperature = fit_temperature(val_logits, val_labels, mask=val_mask)
        scaled = jax.nn.softmax(logits.astype(probs.dtype) / temperature, axis=-1)
        results["temperature"] = temperature
        results["tce"] = ece(scaled, labels, num_bins, mask=mask)
    return results


def calibration_metrics(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
    val_logits: jax.Array | None = None,
    val_labels: jax.Array | None = None,
    val_mask: jax.Array | None = None,
    num_bins: int = 15,
    loss: str = "cross_entropy",
) -> dict[str, float]:
    """Every calibration metric of ``softmax(logits)`` at once, jitted once per input shape.

    Keys (no prefix; the loop adds ``train/``, ``test/``): ``loss`` (the training loss ``loss``
    from ``sam_jax.losses``), ``accuracy``, ``nll``, ``brier``, ``ece``, ``adaptive_ece``,
    ``classwise_ece``, ``mce``, ``kce``, ``mean_confidence``, ``margin_moment`` (``Q``),
    ``mean_margin``, ``true_class_entropy`` (``H(p_y)``) and, when ``val_logits``/``val_labels``
    are given, ``temperature`` (fitted on them) and ``tce`` (ECE of ``softmax(logits / T)``).
    Probabilities are ``softmax(logits)`` whatever the loss, as for the MSE models of
    Morosini et al. (2026, arXiv:2604.20614), App. D.

    Args:
      logits: ``[N, K]`` logits.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).
      val_logits: optional ``[N_val, K]`` validation logits for temperature scaling.
      val_labels: ``[N_val]`` validation labels, required with ``val_logits``.
      val_mask: optional ``[N_val]`` validation weights.
      num_bins: number of bins of the binned errors.
      loss: name of the training loss in ``sam_jax.losses.LOSSES`` for the ``loss`` key.

    Returns:
      Flat ``dict[str, float]``.
    """
    _common.check_predictions("calibration_metrics", logits, labels, mask, probabilities=False)
    _common.check_num_bins("calibration_metrics", num_bins)
    losses.get_loss(loss)
    if (val_logits is None) != (val_labels is None):
        raise ValueError(
            "calibration_metrics: pass val_logits and val_labels together (or neither) to get the temperature and TCE."
        )
    if val_logits is None and val_mask is not None:
        raise ValueError("calibration_metrics: val_mask was given without val_logits/val_labels.")
    if val_logits is not None:
        _common.check_predictions(
            "calibration_metrics (validation)", val_logits, val_labels, val_mask, probabilities=False
        )
        if val_logits.shape[1] != logits.shape[1]:
            raise ValueError(
                f"calibration_metrics: val_logits has {val_logits.shape[1]} classes, logits has {logits.shape[1]}."
            )
    values = jax.device_get(
        _metrics(logits, labels, mask, val_logits, val_labels, val_mask, num_bins=num_bins, loss=loss)
    )
    return {name: float(value) for name, value in values.items()}
