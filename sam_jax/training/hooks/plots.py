"""Figures of one run, saved as PNG beside its metrics: the sharpness series and reliability diagrams.

The train loop writes ``sharpness.png`` from its curvature records; ``experiments.evaluate`` writes
the reliability diagram of a saved run. Figures over many runs live in ``sam_jax.analysis``.

References:
  Cohen, Kaur, Li, Kolter & Talwalkar, 2021. Gradient Descent on Neural Networks Typically Occurs
  at the Edge of Stability. ICLR 2021, arXiv:2103.00065.
  Guo, Pleiss, Sun & Weinberger, 2017. On Calibration of Modern Neural Networks. ICML 2017,
  arXiv:1706.04599.
"""

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sam_jax.calibration import bin_statistics, ece

# Panels by scale: eigenvalues comparable with 2/lr, signed bottom-of-spectrum values, the trace.
_PANELS = (
    ("top eigenvalues", ("curvature/hessian_top", "curvature/gauss_newton_top", "curvature/batch_sharpness")),
    ("smallest eigenvalue", ("curvature/hessian_min", "curvature/kappa_min")),
    ("trace", ("curvature/hessian_trace",)),
)


def plot_sharpness(records: Sequence[dict[str, Any]], path: str, *, learning_rate: float | None = None) -> None:
    """Plots every scalar ``curvature/`` series against ``step`` and saves a PNG.

    Series are grouped in panels by scale; the top-eigenvalue panel carries the edge-of-stability
    threshold ``2 / learning_rate`` (Cohen et al. 2021) as a dashed line. The trace panel shades
    plus and minus one standard error when ``curvature/hessian_trace_stderr`` is recorded.
    List-valued entries (the SLQ density) are skipped.

    Args:
      records: metric dicts as the loop wrote them, each with a ``"step"``; records without
        curvature entries are ignored.
      path: output PNG path.
      learning_rate: draws the ``2 / learning_rate`` line when given.

    Raises:
      ValueError: if no record holds a scalar ``curvature/`` value.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for name, value in record.items():
            if name.startswith("curvature/") and isinstance(value, (int, float)):
                steps, values = series.setdefault(name, ([], []))
                steps.append(record["step"])
                values.append(value)
    if not series:
        raise ValueError("No scalar 'curvature/...' values in records; was curvature.every > 0?")
    panels = [
        (title, sorted(n for n in series if n.startswith(prefixes) and not n.endswith("_stderr")))
        for title, prefixes in _PANELS
    ]
    panels = [(title, names) for title, names in panels if names]
    figure = Figure(figsize=(7, 3 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            steps, values = series[name]
            ax.plot(steps, values, marker=".", label=name.removeprefix("curvature/"))
        if "curvature/hessian_trace_stderr" in series and "curvature/hessian_trace" in names:
            steps, values = series["curvature/hessian_trace"]
            _, errors = series["curvature/hessian_trace_stderr"]
            ax.fill_between(
                steps, [v - e for v, e in zip(values, errors)], [v + e for v, e in zip(values, errors)], alpha=0.3
            )
        if title == "top eigenvalues" and learning_rate:
            ax.axhline(2 / learning_rate, color="k", linestyle="--", label="2 / lr")
        ax.set_title(title)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    figure.savefig(path, dpi=120)


def draw_reliability(ax: Any, accuracy: np.ndarray, confidence: np.ndarray, counts: np.ndarray) -> None:
    """Draws the bars of a reliability diagram on ``ax``: each non-empty equal-width bin's accuracy,
    the hatched gap to its mean confidence, and the diagonal of perfect calibration."""
    accuracy, confidence, counts = np.asarray(accuracy), np.asarray(confidence), np.asarray(counts)
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    left, width = edges[:-1], np.diff(edges)
    nonempty = counts > 0
    ax.bar(
        left[nonempty],
        accuracy[nonempty],
        width=width[nonempty],
        align="edge",
        color="#4C72B0",
        edgecolor="white",
        linewidth=0.8,
        label="accuracy",
    )
    ax.bar(
        left[nonempty],
        np.abs(confidence - accuracy)[nonempty],
        bottom=np.minimum(accuracy, confidence)[nonempty],
        width=width[nonempty],
        align="edge",
        color="#DD8452",
        alpha=0.35,
        edgecolor="#C44E52",
        hatch="//",
        linewidth=0.8,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")


def reliability_diagram(
    probs: jax.Array,
    labels: jax.Array,
    num_bins: int = 15,
    *,
    path: str,
    mask: jax.Array | None = None,
    title: str | None = None,
) -> str:
    """Writes a reliability diagram (Guo et al. 2017, Fig. 1) as a PNG.

    Top panel: accuracy of each equal-width bin (bars), the gap to the bin's mean confidence
    (hatched), and the diagonal of perfect calibration; the ECE, accuracy and mean confidence are
    printed in a corner. Bottom panel: the number of examples per bin on a log scale. Bins are those
    of :func:`~sam_jax.calibration.ece`.

    Args:
      probs: ``[N, K]`` predicted probabilities.
      labels: ``[N]`` integer labels.
      num_bins: number of equal-width bins.
      path: output file; parent directories are created.
      mask: optional ``[N]`` example weights (0 for padding).
      title: optional figure title.

    Returns:
      ``path``.
    """
    stats = jax.device_get(bin_statistics(probs, labels, num_bins, mask=mask))
    error = float(ece(probs, labels, num_bins, mask=mask))
    counts = np.asarray(stats.counts)
    total = max(counts.sum(), 1e-12)
    overall_accuracy = float(np.sum(stats.accuracy * counts) / total)
    overall_confidence = float(np.sum(stats.confidence * counts) / total)

    figure = Figure(figsize=(5.0, 6.0), dpi=150, constrained_layout=True)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    draw_reliability(top, stats.accuracy, stats.confidence, counts)
    top.legend(loc="upper left", fontsize=8, frameon=False)
    top.text(
        0.97,
        0.04,
        f"ECE = {100 * error:.2f}%\naccuracy = {100 * overall_accuracy:.2f}%\n"
        f"mean confidence = {100 * overall_confidence:.2f}%\nN = {total:,.0f}",
        transform=top.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8"},
    )
    if title:
        top.set_title(title, fontsize=10)

    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    bottom.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="0.55", edgecolor="white", linewidth=0.8)
    bottom.axvline(overall_accuracy, color="#4C72B0", linewidth=1.2, label="accuracy")
    bottom.axvline(overall_confidence, color="#C44E52", linestyle="--", linewidth=1.2, label="mean confidence")
    if (counts > 0).any():
        bottom.set_yscale("log")
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("examples")
    bottom.legend(loc="upper left", fontsize=7, frameon=False)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png")
    return path
