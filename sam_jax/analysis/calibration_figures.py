"""Figures of the calibration benchmark (Tan et al. 2025, arXiv:2505.23866, Figures 2, 3 and S6)
and of a posterior's predictive (Möllenhoff & Khan 2022, arXiv:2210.01620, Sec. 5).

Each function draws on a :class:`matplotlib.figure.Figure` (no pyplot state, no backend switch) and
writes one PNG; the inputs are plain numbers and metric records, so a report decides what to draw.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sam_jax.analysis.trajectories import trajectory
from sam_jax.training.hooks.plots import draw_reliability

Records = Sequence[Mapping[str, Any]]
MeanStd = tuple[float, float]
DPI = 120


def _save(fig: Figure, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=DPI)


def metric_curve(records: Records, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``key`` over the records that hold it."""
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    if not points:
        return np.array([]), np.array([])
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def mean_curve(runs: Sequence[Records], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, std)`` of ``key`` over runs (seeds), interpolated at the first run's steps."""
    curves = [metric_curve(records, key) for records in runs]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    steps = curves[0][0]
    stacked = np.stack([np.interp(steps, s, v) for s, v in curves])
    return steps, stacked.mean(axis=0), stacked.std(axis=0)


def plot_post_hoc_ece(
    methods: Mapping[str, tuple[Sequence[MeanStd], Sequence[Records]]], kinds: Sequence[str], path: str
) -> None:
    """Figure 3: (a) test ECE raw and after post-hoc calibration, (b, c) test ECE and TCE during training.

    Args:
      methods: ``{name: (the (mean, std) of each of ``kinds`` as fractions, the runs' records)}``.
      kinds: the bar labels of panel (a) (raw, temperature, isotonic).
      path: PNG file to write.
    """
    fig = Figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3)
    width = 0.8 / len(methods)
    for i, (name, (stats, _)) in enumerate(methods.items()):
        axes[0].bar(
            np.arange(len(kinds)) + i * width,
            [100 * m for m, _ in stats],
            width,
            yerr=[100 * s for _, s in stats],
            capsize=3,
            label=name,
        )
    axes[0].set_xticks(np.arange(len(kinds)) + width * (len(methods) - 1) / 2, list(kinds))
    axes[0].set_ylabel("test ECE (%)")
    axes[0].set_title("(a) ECE, raw and after post-hoc calibration")
    axes[0].legend(fontsize=8)
    for ax, key, title in (
        (axes[1], "test/ece", "(b) ECE during training"),
        (axes[2], "test/tce", "(c) TCE during training"),
    ):
        for name, (_, runs) in methods.items():
            steps, mean, std = mean_curve(runs, key)
            if len(steps):
                ax.plot(steps, 100 * mean, marker="o", markersize=3, label=name)
                ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel("test " + key.split("/")[1].upper() + " (%)")
        ax.set_title(title)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_pooled_reliability(
    methods: Mapping[str, tuple[Sequence[Mapping[str, Sequence[float]]], MeanStd]], path: str
) -> None:
    """Reliability diagrams with the bins of every seed pooled, one panel per method.

    Args:
      methods: ``{name: (each seed's bins {"counts", "accuracy", "confidence"}, test ECE (mean, std))}``.
      path: PNG file to write.
    """
    fig = Figure(figsize=(4 * len(methods), 4))
    axes = fig.subplots(1, len(methods), squeeze=False)
    for ax, (name, (bins, (ece_mean, ece_std))) in zip(axes[0], methods.items()):
        counts = np.sum([b["counts"] for b in bins], axis=0)
        correct = np.sum([np.multiply(b["accuracy"], b["counts"]) for b in bins], axis=0)
        confidence = np.sum([np.multiply(b["confidence"], b["counts"]) for b in bins], axis=0)
        nonempty = counts > 0
        accuracy = np.where(nonempty, correct / np.maximum(counts, 1), 0)
        mean_conf = np.where(nonempty, confidence / np.maximum(counts, 1), 0)
        draw_reliability(ax, accuracy, mean_conf, counts)
        ax.set_title(f"{name}\nECE {100 * ece_mean:.2f} ± {100 * ece_std:.2f} % ({len(bins)} seeds pooled)")
        ax.set_xlabel("confidence")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path)


def plot_sam_geometry(records: Records, prefix: str, path: str) -> None:
    """Figure 2: (a) kappa_min at theta and at the SAM point with its bound -||g|| / rho, (b) kappa_min
    along the segment between them at three steps, (c) lambda and its bound lambda_0 (eq. 2).

    Args:
      records: the tracked records of one run (each holds the ``prefix`` keys).
      prefix: the tracker's key prefix (``kappa_min_t<t>``, ``kappa_min_bound``, ``lambda_mean``, ...).
      path: PNG file to write.
    """
    path_keys = sorted(
        (k for k in records[0] if k.startswith(prefix + "kappa_min_t")), key=lambda k: float(k.rsplit("_t", 1)[1])
    )
    fig = Figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3)
    for key, label in ((path_keys[0], "theta"), (path_keys[-1], "theta~ (SAM point)")):
        steps, values = metric_curve(records, key)
        axes[0].plot(steps, values, marker="o", markersize=3, label=f"kappa_min at {label}")
    steps, bound = metric_curve(records, prefix + "kappa_min_bound")
    axes[0].plot(steps, bound, "k--", label="-||g|| / rho")
    axes[0].set_title("(a) kappa_min at theta and theta~")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=8)
    ts = [float(k.rsplit("_t", 1)[1]) for k in path_keys]
    for i in sorted({0, len(records) // 2, len(records) - 1}):
        axes[1].plot(ts, [records[i][k] for k in path_keys], marker="o", label=f"step {records[i]['step']}")
    axes[1].set_title("(b) kappa_min along theta -> theta~")
    axes[1].set_xlabel("t")
    axes[1].legend(fontsize=8)
    for key, label in (
        ("lambda_mean", "lambda (mean)"),
        ("lambda0_mean", "lambda_0 (mean)"),
        ("lambda_median", "lambda (median)"),
        ("lambda0_median", "lambda_0 (median)"),
    ):
        steps, values = metric_curve(records, prefix + key)
        axes[2].plot(steps, values, marker="o", markersize=3, label=label)
    axes[2].set_title("(c) lambda and its bound lambda_0 (eq. 2)")
    axes[2].set_xlabel("step")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_gamma_sweep(gammas: Sequence[float], accuracy: Sequence[MeanStd], ece: Sequence[MeanStd], path: str) -> None:
    """Figure S6: test accuracy and ECE (mean, std as fractions) against CSAM's gamma at rho 0.05."""
    fig = Figure(figsize=(9, 3.5))
    axes = fig.subplots(1, 2)
    for ax, stats, title in ((axes[0], accuracy, "test accuracy (%)"), (axes[1], ece, "test ECE (%)")):
        ax.errorbar(list(gammas), [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o", capsize=3)
        ax.set_xlabel("gamma (0 = SAM)")
        ax.set_title(title)
    fig.suptitle("Figure S6: CSAM's gamma at rho 0.05")
    fig.tight_layout()
    _save(fig, path)


def plot_posterior_samples(
    counts: Sequence[int],
    panels: Sequence[tuple[str, Sequence[float], Sequence[float], float]],
    title: str,
    path: str,
) -> None:
    """A posterior's predictive against the number of samples it averages, one panel per metric.

    Args:
      counts: the numbers of posterior samples (a log2 axis).
      panels: ``(title, means, stds, the point estimate's mean)`` per metric.
      title: the figure's title.
      path: PNG file to write.
    """
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, len(panels))
    for ax, (panel, means, stds, point) in zip(axes, panels):
        ax.errorbar(counts, means, yerr=stds, marker="o", capsize=3, label="posterior average")
        ax.axhline(point, color="gray", linestyle="--", label="point estimate (trained parameters)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("posterior samples")
        ax.set_title(panel)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


def plot_precision_histogram(
    edges: Sequence[float], histograms: Sequence[tuple[str, Sequence[int]]], title: str, path: str
) -> None:
    """Histograms of a diagonal Gaussian posterior's log10 precision per weight, one step line per run."""
    fig = Figure(figsize=(6, 3.4))
    ax = fig.subplots()
    for label, counts in histograms:
        ax.stairs(counts, np.asarray(edges), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("log10 posterior precision N s (per weight)")
    ax.set_ylabel("weights")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_overconfidence(runs: Mapping[str, Records], path: str, title: str, split: str = "test") -> None:
    """The premise of Tan et al. (2025, arXiv:2505.23866): held-out NLL and confidence minus accuracy
    over training, one line per run, the lowest NLL of each run marked.

    Args:
      runs: ``{label: the run's metric records}`` (with ``step`` and ``<split>/...`` metrics).
      path: PNG file to write.
      title: figure title.
      split: the evaluated split.
    """
    fig = Figure(figsize=(10, 3.6))
    nll_axis, gap_axis = fig.subplots(1, 2)
    keys = (f"{split}/nll", f"{split}/accuracy", f"{split}/mean_confidence")
    for label, records in runs.items():
        series = trajectory(records, keys)
        steps, nll = series["step"], series[keys[0]]
        gap = series[keys[2]] - series[keys[1]]
        (line,) = nll_axis.plot(steps, nll, label=label)
        if len(nll):
            best = int(np.argmin(nll))
            nll_axis.plot(steps[best], nll[best], "o", color=line.get_color())
        gap_axis.plot(steps, gap, color=line.get_color(), label=label)
    gap_axis.axhline(0.0, color="black", linewidth=0.6)
    nll_axis.set_title(f"{split} NLL (dot: the lowest)", fontsize=10)
    gap_axis.set_title(f"{split} mean confidence - accuracy (> 0: overconfident)", fontsize=10)
    for axis in (nll_axis, gap_axis):
        axis.set_xlabel("step")
    nll_axis.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
