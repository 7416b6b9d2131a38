"""Metric trajectories of training runs and their correlations (Morosini et al. 2026).

A trajectory is the sequence of values a metric takes at the steps where it was recorded in a
run's ``metrics.jsonl``. Table 1 of Morosini et al. is the Pearson correlation between a calibration
trajectory (ECE, KCE) and the Gauss-Newton sharpness trajectory of the same run, averaged over
learning rates.

References:
  Morosini, Gjika, Poggio & Beneventano, 2026. Too Sharp, Too Sure: When Calibration Follows
  Curvature. arXiv:2604.20614.
"""

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def trajectory(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The values of ``keys`` at every step where all of them are recorded and finite.

    Args:
      records: metric records (dicts with a ``step`` key), in step order.
      keys: metric names, e.g. ``("train/ece", "curvature/gauss_newton_top1")``.

    Returns:
      ``{"step": [T], key: [T] for key in keys}`` as float64 arrays (``step`` as int64).
    """
    rows = [r for r in records if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)]
    result = {"step": np.array([r["step"] for r in rows], np.int64)}
    result.update({k: np.array([r[k] for r in rows], np.float64) for k in keys})
    return result


def seed_mean(runs: Sequence[Sequence[Mapping[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The trajectory of ``key`` averaged over runs (seeds), at the steps every run recorded.

    Args:
      runs: one list of metric records per seed.
      key: metric name.

    Returns:
      ``(steps [T], mean values [T])``.
    """
    series = [trajectory(records, (key,)) for records in runs]
    steps = series[0]["step"]
    for s in series[1:]:
        steps = np.intersect1d(steps, s["step"])
    values = [s[key][np.isin(s["step"], steps)] for s in series]
    return steps, np.mean(values, axis=0) if values else np.zeros(0)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equally long series; NaN when either is constant or shorter than 3.

    With two points any pair correlates perfectly, so such a value would say nothing. The sums are
    exactly rounded (``math.fsum``), so the value is the same on every machine: a BLAS dot product
    sums in an order that depends on the CPU, and a committed report must rebuild bit for bit.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson: need two 1-D series of equal length, got {x.shape} and {y.shape}.")
    if len(x) < 3:
        return math.nan
    dx, dy = x - math.fsum(x) / len(x), y - math.fsum(y) / len(y)
    scale = math.sqrt(math.fsum(dx * dx) * math.fsum(dy * dy))
    return math.fsum(dx * dy) / scale if scale > 0 else math.nan


def trajectory_correlation(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    sharpness: str = "curvature/gauss_newton_top1",
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
) -> float:
    """Pearson correlation over one run between ``metric`` and ``sharpness`` (Table 1, one cell entry).

    Args:
      records: the run's metric records.
      metric: e.g. ``"train/ece"`` or ``"val/kce"``.
      sharpness: the curvature key, GN sharpness by default as in the paper.
      keep: a predicate on records that restricts the trajectory to a window (e.g. the steps
        before interpolation); all records when None.

    Returns:
      The correlation over the steps where both are recorded (NaN if undefined, see :func:`pearson`).
    """
    if keep is not None:
        records = [r for r in records if keep(r)]
    series = trajectory(records, (metric, sharpness))
    return pearson(series[metric], series[sharpness])


def mean_std_over_learning_rates(correlations: Mapping[float, Sequence[float]]) -> tuple[float, float, int]:
    """Table 1 aggregation: average each learning rate over its seeds, then mean and std over rates.

    Args:
      correlations: ``{learning_rate: [correlation per seed]}``; NaN entries are left out.

    Returns:
      ``(mean, std, n)``: the mean and population standard deviation (``ddof=0``) over the ``n``
      learning rates with at least one defined correlation; NaNs when ``n == 0``.
    """
    per_rate = [
        float(np.mean(v)) for v in ([c for c in values if math.isfinite(c)] for values in correlations.values()) if v
    ]
    if not per_rate:
        return math.nan, math.nan, 0
    return float(np.mean(per_rate)), float(np.std(per_rate)), len(per_rate)


def overconfidence(records: Sequence[Mapping[str, Any]], split: str = "test") -> dict[str, float | int | bool]:
    """Whether a run went past its best held-out NLL into overconfidence (Tan et al. 2025,
    arXiv:2505.23866, Sec. 1 and Fig. 1: the premise that SGD's late training raises the NLL while
    the confidence outgrows the accuracy).

    Args:
      records: a run's metric records, in step order, with ``<split>/nll``, ``<split>/accuracy``
        and ``<split>/mean_confidence`` at its evaluations.
      split: the evaluated split (``test`` or ``val``).

    Returns:
      ``best_step`` and ``best_nll`` (the lowest NLL), ``final_step``, ``final_nll``,
      ``nll_rise`` (final minus best), the final ``accuracy`` and ``confidence_minus_accuracy``,
      the confidence-minus-accuracy at the best step, and ``past_best``: the final NLL is above the
      best and the final confidence above the final accuracy.

    Raises:
      ValueError: no record holds the three metrics.
    """
    keys = (f"{split}/nll", f"{split}/accuracy", f"{split}/mean_confidence")
    series = trajectory(records, keys)
    if not len(series["step"]):
        raise ValueError(f"No record holds {keys}: evaluate the run on {split!r} during training.")
    nll, accuracy, confidence = (series[k] for k in keys)
    gap = confidence - accuracy
    best = int(np.argmin(nll))
    rise = float(nll[-1] - nll[best])
    return {
        "best_step": int(series["step"][best]),
        "best_nll": float(nll[best]),
        "final_step": int(series["step"][-1]),
        "final_nll": float(nll[-1]),
        "nll_rise": rise,
        "accuracy": float(accuracy[-1]),
        "confidence_minus_accuracy": float(gap[-1]),
        "confidence_minus_accuracy_at_best": float(gap[best]),
        "past_best": bool(rise > 0 and gap[-1] > 0),
    }
