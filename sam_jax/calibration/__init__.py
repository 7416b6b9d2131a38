"""Calibration metrics, post-hoc scaling, OOD detection and predictive averaging.

Pure functions of predictions ``probs``/``logits [N, K]`` and labels ``[N]``; each takes an
optional ``mask=`` of example weights so that padded evaluation batches are exact. See
docs/calibration.md for definitions, the bin convention and measured speed.
"""

from sam_jax.calibration.binning import equal_width_bins, equal_width_edges
from sam_jax.calibration.bootstrap import BootstrapInterval, bootstrap_ci
from sam_jax.calibration.entropy import (
    binary_entropy,
    sam_entropy_coefficient,
    sam_entropy_coefficient_bound,
    true_class_entropy,
)
from sam_jax.calibration.kernel import kernel_calibration_error
from sam_jax.calibration.margins import margin_moment, margins, mse_optimum_confidence
from sam_jax.calibration.metrics import (
    BinStatistics,
    accuracy,
    adaptive_ece,
    bin_statistics,
    brier,
    classwise_ece,
    ece,
    max_calibration_error,
    mean_confidence,
    nll,
)
from sam_jax.calibration.ood import (
    auroc,
    max_probability_score,
    misclassification_auroc,
    negative_entropy_score,
    one_vs_rest_auroc,
)
from sam_jax.calibration.predictive import member_average_log_probs, predictive_average
from sam_jax.calibration.scaling import IsotonicCalibrator, fit_isotonic, fit_temperature, tce
from sam_jax.calibration.summary import calibration_metrics

__all__ = [
    "BinStatistics",
    "BootstrapInterval",
    "IsotonicCalibrator",
    "accuracy",
    "adaptive_ece",
    "auroc",
    "bin_statistics",
    "binary_entropy",
    "bootstrap_ci",
    "brier",
    "calibration_metrics",
    "classwise_ece",
    "ece",
    "equal_width_bins",
    "equal_width_edges",
    "fit_isotonic",
    "fit_temperature",
    "kernel_calibration_error",
    "margin_moment",
    "margins",
    "max_calibration_error",
    "max_probability_score",
    "misclassification_auroc",
    "mean_confidence",
    "member_average_log_probs",
    "mse_optimum_confidence",
    "negative_entropy_score",
    "nll",
    "one_vs_rest_auroc",
    "predictive_average",
    "sam_entropy_coefficient",
    "sam_entropy_coefficient_bound",
    "tce",
    "true_class_entropy",
]
