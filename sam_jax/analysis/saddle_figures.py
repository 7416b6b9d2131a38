"""Figures of the saddle-escape study (``sam_jax.analysis.saddle``): trajectories and escape-time maps."""

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colors
from matplotlib.figure import Figure

from sam_jax.analysis.saddle import SaddleProblem, Trajectory


def plot_trajectories(
    problem: SaddleProblem,
    trajectories: Mapping[str, Trajectory],
    path: str,
    title: str,
    threshold: float,
    contour: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    dpi: int = 110,
) -> None:
    """Four panels: the path in the problem's two coordinates, the paths that end above the escape
    loss (zoomed in on the saddle), the loss, and the distance from the saddle.

    Args:
      problem: the problem (axis labels, saddle and minimum losses).
      trajectories: label -> one run's :class:`Trajectory` (no batch axes); labels ending in
        ``"+ noise"`` are drawn dashed.
      path: PNG file to write.
      title: the figure's title.
      threshold: the escape loss, drawn as a horizontal line.
      contour: optional ``(X, Y, loss)`` grids drawn under the paths.
    """
    fig = Figure(figsize=(19, 4.4))
    path_ax, zoom_ax, loss_ax, distance_ax = fig.subplots(1, 4)
    if contour is not None:
        levels = np.linspace(float(np.min(contour[2])), float(np.percentile(contour[2], 95)), 25)
        path_ax.contour(*contour, levels=levels, cmap="Greys", linewidths=0.6)
    palette = [f"C{i}" for i in range(10)]
    methods = list(dict.fromkeys(label.removesuffix(" + noise") for label in trajectories))
    for label, run in trajectories.items():
        colour = palette[methods.index(label.removesuffix(" + noise")) % len(palette)]
        style = "--" if label.endswith("+ noise") else "-"
        coordinates = np.asarray(run.coordinates)
        steps = np.arange(1, len(run.losses) + 1)
        path_ax.plot(coordinates[:, 0], coordinates[:, 1], style, color=colour, lw=1.0, label=label)
        path_ax.plot(coordinates[-1, 0], coordinates[-1, 1], "o", color=colour, ms=4)
        if float(run.losses[-1]) >= threshold:
            zoom_ax.plot(coordinates[:, 0], coordinates[:, 1], style, color=colour, lw=0.8, label=label)
            zoom_ax.plot(coordinates[-1, 0], coordinates[-1, 1], "o", color=colour, ms=4)
        loss_ax.plot(steps, np.asarray(run.losses), style, color=colour, lw=1.0, label=label)
        distance_ax.plot(steps, np.maximum(np.asarray(run.distances), 1e-30), style, color=colour, lw=1.0)
    path_ax.plot(0.0, 0.0, "kx", ms=9, mew=2, label="saddle")
    path_ax.set_xlabel(problem.coordinate_names[0])
    path_ax.set_ylabel(problem.coordinate_names[1])
    path_ax.set_title("path (o: last step)")
    path_ax.legend(fontsize=7)
    zoom_ax.plot(0.0, 0.0, "kx", ms=9, mew=2)
    zoom_ax.set_xlabel(problem.coordinate_names[0])
    zoom_ax.set_title("runs that end above the escape loss (zoom)")
    zoom_ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    if zoom_ax.get_legend_handles_labels()[0]:
        zoom_ax.legend(fontsize=7)
    loss_ax.axhline(threshold, color="k", lw=0.8, ls=":", label="escape threshold")
    loss_ax.axhline(problem.saddle_loss, color="gray", lw=0.6)
    loss_ax.set_xscale("log")
    loss_ax.set_xlabel("step + 1")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss (dotted: escape threshold)")
    distance_ax.set_xscale("log")
    distance_ax.set_yscale("log")
    distance_ax.set_xlabel("step + 1")
    distance_ax.set_ylabel("||params - saddle||")
    distance_ax.set_title("distance from the saddle")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def plot_escape_maps(
    median_steps: Mapping[tuple[float, str], np.ndarray],
    escaped: Mapping[tuple[float, str], np.ndarray],
    seeds: int,
    learning_rates: Sequence[float],
    rhos: Sequence[float | None],
    num_steps: int,
    path: str,
    title: str,
    dpi: int = 110,
) -> None:
    """One heat map per (noise level, method): median escape step over the seeds that escaped, per
    learning rate (rows) and radius (columns); each cell says how many seeds escaped.

    Args:
      median_steps: ``(noise_std, method) -> [learning rates, radii]`` medians (NaN: no seed escaped);
        a method without a radius has one column.
      escaped: the same keys -> ``[learning rates, radii]`` counts of escaped seeds.
      seeds: seeds per cell.
      learning_rates: the rows' values.
      rhos: the radii of the columns of the methods that have one.
      num_steps: the step cap (the colour scale's top).
      path: PNG file to write.
      title: the figure's title.
    """
    noises = list(dict.fromkeys(noise for noise, _ in median_steps))
    methods = list(dict.fromkeys(method for _, method in median_steps))
    widths = [median_steps[(noises[0], m)].shape[1] + 0.6 for m in methods]
    fig = Figure(figsize=(2.0 + 0.75 * sum(widths), 1.2 + 2.4 * len(noises)), layout="constrained")
    axes = fig.subplots(len(noises), len(methods), squeeze=False, gridspec_kw={"width_ratios": widths})
    norm = colors.LogNorm(vmin=1, vmax=num_steps)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgray")
    image = None
    for row, noise in enumerate(noises):
        for col, method in enumerate(methods):
            ax = axes[row, col]
            values = median_steps[(noise, method)]
            counts = escaped[(noise, method)]
            image = ax.imshow(np.ma.masked_invalid(values), norm=norm, cmap=cmap, aspect="auto", origin="lower")
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    text = (
                        f"{counts[i, j]}/{seeds}"
                        if np.isnan(values[i, j])
                        else f"{values[i, j]:.0f}\n{counts[i, j]}/{seeds}"
                    )
                    ax.text(j, i, text, ha="center", va="center", fontsize=6)
            ax.set_yticks(range(len(learning_rates)), [f"{lr:g}" for lr in learning_rates])
            columns = [f"{r:g}" for r in rhos] if values.shape[1] == len(rhos) and values.shape[1] > 1 else ["-"]
            ax.set_xticks(range(values.shape[1]), columns, fontsize=7)
            ax.set_title(f"{method}, noise {noise:g}", fontsize=9)
            ax.set_xlabel("rho" if len(columns) > 1 else "")
            if col == 0:
                ax.set_ylabel("learning rate")
    if image is not None:
        fig.colorbar(image, ax=axes, label="median escape step (gray: no seed escaped)", shrink=0.8)
    fig.suptitle(title)
    fig.savefig(path, dpi=dpi)
