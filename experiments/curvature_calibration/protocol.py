"""The protocol of the reproduction of Morosini et al. (2026, arXiv:2604.20614), Table 1: its rows,
the paper's numbers, the thresholds, and the trajectory windows of the report's variants."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

# Table 1 rows: the paper's "Test" is held-out data; we use the validation split.
TABLE_ROWS = (("train", "ece"), ("train", "kce"), ("val", "ece"), ("val", "kce"))
# Optimizers whose sharpness is bounded by 2/lr at the edge of stability (no preconditioner).
EOS_OPTIMIZERS = ("gd", "sgd", "sam", "bulk_sgd")
GN_SHARPNESS = "curvature/gauss_newton_top1"
BATCH_SHARPNESS = "curvature/batch_sharpness"
# Table 1 of Morosini et al. (2026) on CIFAR-10: (mean, std) over 4 learning rates.
PAPER_TABLE1 = {
    ("train", "ece"): {
        "gd": (0.83, 0.08),
        "sgd": (0.84, 0.07),
        "adamw": (0.72, 0.07),
        "muon": (0.63, 0.26),
        "sam": (0.92, 0.04),
    },
    ("train", "kce"): {
        "gd": (0.83, 0.08),
        "sgd": (0.84, 0.07),
        "adamw": (0.70, 0.08),
        "muon": (0.61, 0.28),
        "sam": (0.91, 0.04),
    },
    ("val", "ece"): {
        "gd": (0.96, 0.02),
        "sgd": (0.97, 0.01),
        "adamw": (0.15, 0.15),
        "muon": (-0.10, 0.28),
        "sam": (0.98, 0.01),
    },
    ("val", "kce"): {
        "gd": (0.97, 0.01),
        "sgd": (0.97, 0.01),
        "adamw": (0.21, 0.22),
        "muon": (-0.16, 0.31),
        "sam": (0.98, 0.01),
    },
}
# Train accuracy that counts as interpolating the train subset (variants before_99 and from_99).
INTERPOLATION_ACCURACY = 0.99
# Train accuracy below which a step is "well before convergence" (variant pre_interpolation).
PRE_INTERPOLATION_ACCURACY = 0.95
# Fraction of a run's steps that variant after_first_5pct drops.
EARLY_FRACTION = 0.05
# A run "dips" when, after first reaching PRE_INTERPOLATION_ACCURACY on the train subset, its train
# accuracy falls below this at a later tracked point (BulkSGD's late instability).
LATE_DIP_ACCURACY = 0.8
# runs.csv columns of the late-dip check.
FIRST_STEP_REACHED = f"first_step_at_train_accuracy_{PRE_INTERPOLATION_ACCURACY:g}"
LOWEST_ACCURACY_AFTER = f"lowest_train_accuracy_after_{PRE_INTERPOLATION_ACCURACY:g}"
HIGHEST_ECE_AFTER = f"highest_train_ece_after_{PRE_INTERPOLATION_ACCURACY:g}"
# The report's Table 1 variants: (description, sharpness key, window). A window takes a run's records
# and its config and returns the filter of the records it keeps (None = all).
RecordFilter = Callable[[Mapping[str, Any]], bool] | None
Window = Callable[[Sequence[Mapping[str, Any]], ml_collections.ConfigDict], RecordFilter]


def _whole(records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict) -> None:
    return None


def _after_early_steps(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    last = max(r["step"] for r in records)
    return lambda r: r["step"] >= EARLY_FRACTION * last


def _before_interpolation(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    return lambda r: r.get("train/accuracy", 1.0) < PRE_INTERPOLATION_ACCURACY


def _regular(config: ml_collections.ConfigDict) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a record is at one of the run's evenly spaced evaluation steps (multiples of
    ``eval_every_steps``), as opposed to its log-spaced early points."""
    every = config.eval_every_steps
    return lambda r: every > 0 and r["step"] % every == 0


def _evenly_spaced(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    return _regular(config)


def _log_spaced_only(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    regular = _regular(config)
    return lambda r: not regular(r)


def first_step_at(records: Sequence[Mapping[str, Any]], accuracy: float) -> int | None:
    """The first evaluated step whose train accuracy is >= ``accuracy`` (None if none)."""
    return next((int(r["step"]) for r in records if r.get("train/accuracy", -1.0) >= accuracy), None)


def _before_target(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    first = first_step_at(records, INTERPOLATION_ACCURACY)
    return lambda r: first is None or r["step"] < first


def _from_target(
    records: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> Callable[[Mapping[str, Any]], bool]:
    first = first_step_at(records, INTERPOLATION_ACCURACY)
    return lambda r: first is not None and r["step"] >= first


VARIANTS: dict[str, tuple[str, str, Window]] = {
    "full": ("the whole trajectory", GN_SHARPNESS, _whole),
    "evenly_spaced": (
        "evenly spaced steps only (every eval_every_steps; the log-spaced early points left out)",
        GN_SHARPNESS,
        _evenly_spaced,
    ),
    "log_spaced_points": (
        "the log-spaced early points only (the evenly spaced steps left out)",
        GN_SHARPNESS,
        _log_spaced_only,
    ),
    "before_99": (
        f"before the step that first reached train accuracy {INTERPOLATION_ACCURACY}",
        GN_SHARPNESS,
        _before_target,
    ),
    "from_99": (
        f"from the step that first reached train accuracy {INTERPOLATION_ACCURACY} on (runs that never did: none)",
        GN_SHARPNESS,
        _from_target,
    ),
    "after_first_5pct": (
        f"without the first {EARLY_FRACTION:.0%} of each run's steps",
        GN_SHARPNESS,
        _after_early_steps,
    ),
    "pre_interpolation": (
        f"before interpolation only (steps with train accuracy < {PRE_INTERPOLATION_ACCURACY})",
        GN_SHARPNESS,
        _before_interpolation,
    ),
    "batch_sharpness": ("the whole trajectory, batch sharpness in place of GN sharpness", BATCH_SHARPNESS, _whole),
}
# The metrics the report reads: what ``export`` keeps of each record.
REPORT_KEYS = (
    "step",
    "epoch",
    "train_step/loss",
    "curvature/gauss_newton_lanczos_steps",
    "curvature/gauss_newton_relative_residual",
    "curvature/gauss_newton_top1_reference",
    "curvature/hessian_top1",
    GN_SHARPNESS,
    BATCH_SHARPNESS,
) + tuple(
    f"{split}/{key}"
    for split in ("train", "val")
    for key in ("loss", "accuracy", "ece", "kce", "mean_confidence", "mean_margin", "margin_moment")
)
