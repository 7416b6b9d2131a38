"""Trajectory figures of Morosini et al. (2026), App. C (Figures A1-A14, A16-A17).

References:
  Morosini, Gjika, Poggio & Beneventano, 2026. Too Sharp, Too Sure: When Calibration Follows
  Curvature. arXiv:2604.20614.
"""

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from sam_jax.analysis.trajectories import seed_mean

Runs = Sequence[Sequence[Mapping[str, Any]]]  # per learning rate: one record list per seed

GN_SHARPNESS = "curvature/gauss_newton_top1"
BATCH_SHARPNESS = "curvature/batch_sharpness"
PANELS = (("loss", "loss"), ("accuracy", "accuracy"), ("ece", "ECE"), ("mean_margin", "mean margin"))


def _colours(count: int) -> list:
    return [matplotlib.colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, max(count, 1))]


def _has(runs: Sequence[Mapping[str, Any]], key: str) -> bool:
    return any(key in r for records in runs for r in records)


def plot_dynamics(
    runs_by_lr: Mapping[float, Runs],
    path: str,
    title: str,
    eos_threshold: bool = True,
    dpi: int = 90,
    log_steps: bool = False,
) -> None:
    """Appendix C figure: loss, accuracy, ECE, margin and sharpness vs step; train left, validation right.

    Colour encodes the learning rate (seeds averaged). The sharpness rows show the GN top eigenvalue
    (solid) and batch sharpness (dotted) when recorded, both measured on the training loss, so the
    validation column repeats them; ``2 / lr`` is dashed when ``eos_threshold``.

    Args:
      runs_by_lr: ``{learning_rate: [records of each seed]}``.
      path: PNG file to write.
      title: figure title (optimizer, loss, dataset).
      eos_threshold: draw ``2 / lr`` (meaningful for GD, SGD, SAM, BulkSGD; not for AdamW/Muon).
      dpi: resolution.
      log_steps: a symmetric-log step axis (linear below 10), for runs tracked at log-spaced steps.
    """
    rows = len(PANELS) + 1
    fig = Figure(figsize=(9, 2.1 * rows))  # no pyplot: no global figure state or backend
    axes = fig.subplots(rows, 2, sharex=True, squeeze=False)
    colours = _colours(len(runs_by_lr))
    for colour, (lr, runs) in zip(colours, sorted(runs_by_lr.items())):
        for column, split in enumerate(("train", "val")):
            for row, (key, label) in enumerate(PANELS):
                steps, values = seed_mean(runs, f"{split}/{key}")
                axes[row, column].plot(steps, values, color=colour, label=f"lr={lr:.3g}")
                axes[row, column].set_ylabel(label)
            ax = axes[-1, column]
            steps, values = seed_mean(runs, GN_SHARPNESS)
            ax.plot(steps, values, color=colour)
            if _has(runs, BATCH_SHARPNESS):
                steps, values = seed_mean(runs, BATCH_SHARPNESS)
                ax.plot(steps, values, color=colour, linestyle=":")
            if eos_threshold:
                ax.axhline(2 / lr, color=colour, linestyle="--", linewidth=0.8)
            ax.set_ylabel("sharpness")
            ax.set_xlabel("step")
    top = max((np.max(seed_mean(runs, GN_SHARPNESS)[1], initial=0.0) for runs in runs_by_lr.values()), default=1.0)
    for column, split in enumerate(("train", "validation")):
        axes[0, column].set_title(split)
        axes[-1, column].set_ylim(0, 1.3 * top if top > 0 else 1.0)
        if log_steps:
            axes[-1, column].set_xscale("symlog", linthresh=10)
            axes[-1, column].set_xlim(left=0)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"{title}\nsharpness: GN top-1 (solid), batch sharpness (dotted)"
        + (", 2/lr (dashed)" if eos_threshold else ""),
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_ece_vs_sharpness(
    groups: Mapping[str, Mapping[float, Runs]],
    path: str,
    split: str = "train",
    title: str | None = None,
    dpi: int = 90,
) -> None:
    """Figure A1: ECE against GN sharpness along each trajectory, one panel per optimizer.

    A filled circle marks the first tracked step and a cross the last; colour encodes the
    learning rate within a panel.

    Args:
      groups: ``{optimizer label: {learning_rate: [records of each seed]}}``.
      path: PNG file to write.
      split: whose ECE (``train`` or ``val``).
      title: figure title.
      dpi: resolution.
    """
    columns = min(len(groups), 4)
    rows = -(-len(groups) // columns)
    fig = Figure(figsize=(3.2 * columns, 2.9 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, (group, runs_by_lr) in zip(axes.flat, groups.items()):
        for colour, (lr, runs) in zip(_colours(len(runs_by_lr)), sorted(runs_by_lr.items())):
            steps_s, sharp = seed_mean(runs, GN_SHARPNESS)
            steps_e, ece = seed_mean(runs, f"{split}/ece")
            common = np.intersect1d(steps_s, steps_e)
            x, y = sharp[np.isin(steps_s, common)], ece[np.isin(steps_e, common)]
            if not len(x):
                continue
            ax.plot(x, y, color=colour, linewidth=1, label=f"lr={lr:.3g}")
            ax.scatter(x[:1], y[:1], color=colour, marker="o", s=25)
            ax.scatter(x[-1:], y[-1:], color=colour, marker="x", s=35)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel("GN sharpness")
        ax.set_ylabel(f"{split} ECE")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    fig.suptitle(title or f"{split} ECE vs GN sharpness (o first tracked step, x last)", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi)


def plot_figure1(groups: Mapping[str, Mapping[float, Runs]], path: str, title: str, dpi: int = 90) -> None:
    """Figure 1: train ECE (top) and GN sharpness with ``2 / lr`` dashed (bottom), one column per optimizer.

    Seeds are averaged at the steps all of them recorded (up to the earliest early stop); the
    step axis is symmetric-log (linear below 10), so progressive sharpening, the edge of
    stability and the approach to interpolation are all visible.

    Args:
      groups: ``{optimizer label: {learning_rate: [records of each seed]}}`` (GD and SGD in the paper).
      path: PNG file to write.
      title: figure title.
      dpi: resolution.
    """

    def draw(top, bottom, runs_by_lr):
        for colour, (lr, runs) in zip(_colours(len(runs_by_lr)), sorted(runs_by_lr.items())):
            top.plot(*seed_mean(runs, "train/ece"), color=colour, label=f"lr=2/{2 / lr:.3g}")
            bottom.plot(*seed_mean(runs, GN_SHARPNESS), color=colour)
            bottom.axhline(2 / lr, color=colour, linestyle="--", linewidth=0.8)

    _two_rows_per_group(groups, draw, ("train ECE", "GN sharpness"), path, title, dpi)


def plot_confidence_gap(groups: Mapping[str, Mapping[float, Runs]], path: str, title: str, dpi: int = 90) -> None:
    """Over- and underconfidence along training: train ``mean confidence - accuracy`` and train ECE.

    ECE is blind to the sign of the miscalibration; this figure shows it: above zero the model is
    overconfident (the regime the sharpness bound of Morosini et al. 2026, Thm. 4.1, speaks about),
    below zero underconfident. One column per optimizer, seeds averaged, symmetric-log steps.

    Args:
      groups: ``{optimizer label: {learning_rate: [records of each seed]}}``.
      path: PNG file to write.
      title: figure title.
      dpi: resolution.
    """

    def draw(top, bottom, runs_by_lr):
        for colour, (lr, runs) in zip(_colours(len(runs_by_lr)), sorted(runs_by_lr.items())):
            steps, confidence = seed_mean(runs, "train/mean_confidence")
            accuracy_steps, accuracy = seed_mean(runs, "train/accuracy")
            common = np.intersect1d(steps, accuracy_steps)
            gap = confidence[np.isin(steps, common)] - accuracy[np.isin(accuracy_steps, common)]
            top.plot(common, gap, color=colour, label=f"lr={lr:.3g}")
            bottom.plot(*seed_mean(runs, "train/ece"), color=colour)
        top.axhline(0.0, color="black", linewidth=0.6)

    _two_rows_per_group(groups, draw, ("confidence - accuracy", "train ECE"), path, title, dpi)


def _two_rows_per_group(
    groups: Mapping[str, Mapping[float, Runs]],
    draw: Callable[[Any, Any, Mapping[float, Runs]], None],
    labels: tuple[str, str],
    path: str,
    title: str,
    dpi: int,
) -> None:
    """A figure of two rows and one column per group, sharing a symmetric-log step axis from 0."""
    fig = Figure(figsize=(4.2 * len(groups), 5.4))
    axes = fig.subplots(2, len(groups), sharex="col", squeeze=False)
    for column, (group, runs_by_lr) in enumerate(groups.items()):
        top, bottom = axes[:, column]
        draw(top, bottom, runs_by_lr)
        top.set_title(group)
        top.set_ylabel(labels[0])
        bottom.set_ylabel(labels[1])
        bottom.set_xlabel("step")
        bottom.set_xscale("symlog", linthresh=10)
        bottom.set_xlim(left=0)
        top.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi)


def _save(fig: Figure, path: str, dpi: int) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
