"""Figures of Stable SAM's learning-rate regime (Tan et al. 2024, arXiv:2401.07250): final metrics
against the learning rate, and SAM's descent / ascent gradient-norm ratio along training.

Each function draws on a :class:`matplotlib.figure.Figure` (no pyplot state) and writes one PNG.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure


def plot_metrics_vs_learning_rate(
    rows: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[tuple[str, str, bool]],
    path: str,
    title: str,
) -> None:
    """One panel per metric: its mean ± std over seeds against the learning rate, one line per method.

    Args:
      rows: one row per (method, learning rate) with ``method``, ``learning_rate``, ``diverged`` and
        ``<metric>_mean`` / ``<metric>_std`` for each metric's last path part.
      methods: the methods in drawing order.
      metrics: ``(key, label, higher is better)`` per panel.
      path: PNG file to write.
      title: the figure's title.
    """
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, len(metrics))
    for ax, (key, label, higher) in zip(axes, metrics):
        metric = key.split("/")[-1]
        for i, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["learning_rate"])
            rates = [r["learning_rate"] for r in mine]
            means = [r[f"{metric}_mean"] for r in mine]
            stds = [r[f"{metric}_std"] for r in mine]
            ax.errorbar(rates, means, yerr=stds, marker="o", ms=4, capsize=3, color=f"C{i}", label=method)
            diverged = [r["learning_rate"] for r in mine if r["diverged"]]
            if diverged:
                ax.plot(diverged, [ax.get_ylim()[0]] * len(diverged), "x", color=f"C{i}", ms=8)
        finite = [r[f"{metric}_mean"] for r in rows if r[f"{metric}_mean"] > 0]
        if finite and max(finite) > 100 * min(finite):
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (peak of the cosine schedule)")
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)")
    axes[0].legend(fontsize=8, title="x: a seed diverged")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_ratio_trajectories(
    curves: Mapping[tuple[str, float], tuple[np.ndarray, np.ndarray]], path: str, title: str
) -> None:
    """SAM's descent / ascent gradient-norm ratio along training, one panel per method, colour by rate.

    Args:
      curves: ``{(method, learning rate): (steps, seed-mean ratio)}``.
      path: PNG file to write.
      title: the figure's title.
    """
    groups = sorted({group for group, _ in curves})
    fig = Figure(figsize=(6 * max(len(groups), 1), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(groups), 1)))
    rates = sorted({lr for _, lr in curves})
    palette = [matplotlib.colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, max(len(rates), 1))]
    for ax, group in zip(axes, groups):
        for lr in rates:
            if (group, lr) not in curves:
                continue
            steps, mean = curves[(group, lr)]
            ax.plot(steps, mean, marker=".", ms=3, color=palette[rates.index(lr)], label=f"lr {lr:g}")
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_xlabel("step")
        ax.set_ylabel("||grad at w + e|| / ||grad at w|| (seed mean)")
        ax.set_title(f"{group}: descent / ascent gradient norm (1: SSAM's step)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
