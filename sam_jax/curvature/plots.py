"""Figure of the curvature series recorded during training."""
from typing import Any, Optional, Sequence

from matplotlib.figure import Figure

# Panels by scale: eigenvalues comparable with 2/lr, signed bottom-of-spectrum values, the trace.
_PANELS = (
    ("top eigenvalues", ("curvature/hessian_top", "curvature/gauss_newton_top",
                         "curvature/batch_sharpness")),
    ("smallest eigenvalue", ("curvature/hessian_min", "curvature/kappa_min")),
    ("trace", ("curvature/hessian_trace",)),
)


def plot_sharpness(
    records: Sequence[dict[str, Any]], path: str, *, learning_rate: Optional[float] = None
) -> None:
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
            ax.fill_between(steps, [v - e for v, e in zip(values, errors)],
                            [v + e for v, e in zip(values, errors)], alpha=0.3)
        if title == "top eigenvalues" and learning_rate:
            ax.axhline(2 / learning_rate, color="k", linestyle="--", label="2 / lr")
        ax.set_title(title)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("step")
    figure.savefig(path, dpi=120)
