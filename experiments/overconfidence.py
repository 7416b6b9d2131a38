"""The premise check of Tan et al. (2025, arXiv:2505.23866): did a run go past its best held-out NLL?

    python -m experiments.overconfidence --config.runs=sgd=runs/a,sam=runs/b --config.output_dir=out

SAM's calibration benefit is measured against SGD that has become overconfident: late in training
its held-out NLL rises while its confidence outgrows its accuracy. For each run this reads the
evaluations in ``metrics.jsonl`` (``sam_jax.analysis.overconfidence``) and writes
``overconfidence.md`` (a table), ``overconfidence.csv`` (its rows, full precision, with each run's
directory) and ``overconfidence.png`` (the NLL and the
confidence-minus-accuracy curves, ``sam_jax.analysis.calibration_figures.plot_overconfidence``).
"""

import os

import ml_collections

from experiments import cli
from experiments.tables import write_table
from sam_jax.analysis import overconfidence
from sam_jax.analysis.calibration_figures import plot_overconfidence
from sam_jax.training import read_metrics

COLUMNS = (
    ("run", "run", ""),
    ("lowest NLL at step", "best_step", ""),
    ("lowest NLL", "best_nll", ".4f"),
    ("final step", "final_step", ""),
    ("final NLL", "final_nll", ".4f"),
    ("NLL rise", "nll_rise", "+.4f"),
    ("final accuracy", "accuracy", ".4f"),
    ("conf. - acc. at lowest NLL", "confidence_minus_accuracy_at_best", "+.4f"),
    ("final conf. - acc.", "confidence_minus_accuracy", "+.4f"),
    ("past its best NLL, overconfident", "past_best", ""),
)


def parse_runs(text: str) -> dict[str, str]:
    """``"a=dir1,dir2"`` -> ``{"a": "dir1", "dir2": "dir2"}`` (a run without a label is named by its folder).

    Raises:
      ValueError: no run, or two runs with one label.
    """
    runs: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        label, _, directory = item.rpartition("=")
        label = label or os.path.basename(os.path.normpath(directory))
        if label in runs:
            raise ValueError(f"--config.runs names {label!r} twice.")
        runs[label] = directory
    if not runs:
        raise ValueError("--config.runs is empty: give run directories, e.g. --config.runs=sgd=runs/sgd.")
    return runs


def report(config: ml_collections.ConfigDict) -> list[dict]:
    """Writes the table (Markdown and CSV) and the figure for ``config.runs`` into ``config.output_dir``;
    returns the rows."""
    if not config.output_dir:
        raise ValueError("--config.output_dir is required.")
    runs = parse_runs(config.runs)
    records = {label: read_metrics(directory) for label, directory in runs.items()}
    rows = [
        {"run": label, **overconfidence(records[label], config.split), "directory": directory}
        for label, directory in runs.items()
    ]
    os.makedirs(config.output_dir, exist_ok=True)
    lines = write_table(os.path.join(config.output_dir, "overconfidence.csv"), rows, COLUMNS)
    with open(os.path.join(config.output_dir, "overconfidence.md"), "w") as f:
        f.write(f"Split: {config.split}; NLL, accuracy and mean confidence at the runs' evaluations.\n\n")
        f.write("\n".join(lines) + "\n")
    plot_overconfidence(records, os.path.join(config.output_dir, "overconfidence.png"), config.title, config.split)
    return rows


def main(config: ml_collections.ConfigDict) -> None:
    rows = report(config)
    for row in rows:
        verdict = "past its best NLL, overconfident" if row["past_best"] else "not past its best NLL"
        print(
            f"{row['run']}: lowest {config.split} NLL {row['best_nll']:.4f} at step {row['best_step']}, final "
            f"{row['final_nll']:.4f} (step {row['final_step']}), confidence - accuracy "
            f"{row['confidence_minus_accuracy']:+.4f}: {verdict}"
        )
    print(f"Report: {config.output_dir}")


if __name__ == "__main__":
    cli.run(main, os.path.join(os.path.dirname(__file__), "configs", "overconfidence.py"))
