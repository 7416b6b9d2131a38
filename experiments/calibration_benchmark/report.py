"""The calibration benchmark's report: the paper's tables beside ours and its figures (Tan et al.
2026, arXiv:2505.23866)."""

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from experiments.calibration_benchmark.jobs import EVAL_FILE, GEOMETRY_PREFIX, TUNED_FILE, tuned_hparams
from experiments.calibration_benchmark.results import BEST_CSAM, CSAM_GAMMAS, Results, present_labels
from experiments.configs.calibration_benchmark import NAMES
from experiments.grid import Job
from experiments.tables import markdown_row, markdown_table, mean_std, mean_std_cell, write_csv
from sam_jax.analysis.calibration_figures import (
    plot_gamma_sweep,
    plot_pooled_reliability,
    plot_post_hoc_ece,
    plot_sam_geometry,
)

# The columns of Table 3 / S5 (in %), and the suite's key of each.
TABLE3_COLUMNS = (
    ("Test Acc ↑", "accuracy"),
    ("ECE ↓", "ece"),
    ("ClasswiseECE ↓", "classwise_ece"),
    ("AdaECE ↓", "adaptive_ece"),
    ("TCE ↓", "tce"),
    ("AUROC ↑", "auroc_ovr"),
)


def _pct(mean: float, std: float) -> str:
    return mean_std_cell(mean, std, scale=100)


def _paper_cell(value: tuple[float, float] | None) -> str:
    return "—" if value is None else mean_std_cell(*value)


def _table(
    results: Results,
    title: str,
    labels: Sequence[str],
    columns: Sequence[tuple[str, Sequence[str], str]],
    paper: Mapping[str, Sequence[tuple[float, float] | None]] | None,
    paper_caption: str,
) -> tuple[list[str], list[dict[str, Any]]]:
    """A Markdown table (ours, and the paper's beside each column when given) and its CSV rows.

    ``columns`` are ``(header, path into an evaluation, format)`` with format ``pct`` (x 100,
    mean ± std) or ``raw``.
    """
    header = ["method", "seeds"]
    for column, _, _ in columns:
        header += [column] + ([f"{column} (paper)"] if paper else [])
    lines = [f"### {title}", ""]
    if paper:
        lines += [paper_caption, ""]
    lines += markdown_table(header)
    rows = []
    for label in labels:
        runs = results.runs(label)
        cells = [results.name(label), str(len(runs))]
        row: dict[str, Any] = {"method": results.name(label), "label": label, "seeds": len(runs)}
        for i, (_, path, fmt) in enumerate(columns):
            mean, std = results.stat(label, path)
            cells.append(_pct(mean, std) if fmt == "pct" else mean_std_cell(mean, std, ".3g", spread_number=".2g"))
            row[f"{'.'.join(path)}_mean"], row[f"{'.'.join(path)}_std"] = mean, std
            if paper:
                cells.append(_paper_cell((paper.get(label) or [None] * len(columns))[i]))
        rows.append(row)
        lines.append(markdown_row(cells))
    return lines + [""], rows


def report(config: ml_collections.ConfigDict, jobs: Sequence[Job], out: str | None = None) -> str:
    """Writes the tables and figures of the method jobs among ``jobs`` to ``out`` (default
    ``<workdir>/report``); returns that directory.

    Raises:
      ValueError: the search is unfinished, or no job has been evaluated yet.
    """
    from experiments.configs.calibration_benchmark import paper_tables

    jobs = [job for job in jobs if job.group in config.methods]
    if not jobs:
        raise ValueError(f"{config.workdir} has no {TUNED_FILE} and its search is unfinished; run --mode=run first.")
    results = Results(config, jobs)
    if not results.evals:
        raise ValueError(f"No job under {config.workdir} has {EVAL_FILE}; run --mode=run first.")
    out = out or os.path.join(config.workdir, "report")
    os.makedirs(out, exist_ok=True)
    paper, caption = paper_tables(config.data.name)
    tuned = tuned_hparams(config)
    steps = sorted({e["step"] for runs in results.evals.values() for e in runs})
    lines = [
        f"# Calibration benchmark: {config.data.name} / {config.model.name}",
        "",
        f"Test set; mean ± std (ddof 0) over seeds, in %; ECE with {config.num_bins} bins; TCE is the ECE after "
        f"temperature scaling on the validation split ({config.data.val_size} examples); AUROC is the macro "
        f"one-vs-rest AUROC. SGD-based methods use the learning rate {tuned['learning_rate']:g} and weight decay "
        f"{tuned['weight_decay']:g} of SGD's search ({tuned.get('metric', 'fixed')}); trained steps: {steps}.",
        "",
    ]
    metric_columns = [(header, ("test", key), "pct") for header, key in TABLE3_COLUMNS]
    main = [
        "ce",
        "focal",
        "dual_focal",
        "adafocal",
        "mixup",
        "mit_l",
        "mmce",
        "batch_ensemble",
        "rank1_bnn",
        "vi",
        "mimo",
        "acls",
        "balcal",
        "bsam",
        "sam",
        *CSAM_GAMMAS,
        BEST_CSAM,
    ]
    tables = [
        ("table3", "Table 3 / S5: every method", main, metric_columns),
        (
            "table_s11",
            "Tables S11 / S12: SAM variants",
            ["ce", "sam", "asam", "vasso", BEST_CSAM],
            metric_columns,
        ),
        (
            "table_s13",
            "Table S13: calibration-oriented training losses",
            ["ce", "label_smoothing", "acls", "crl", "cpc", "mbls", "mdca", "sam", BEST_CSAM],
            [("Test Acc ↑", ("test", "accuracy"), "pct"), ("ECE ↓", ("test", "ece"), "pct")],
        ),
        (
            "table_s15",
            "Table S15: SAM and CSAM with other training losses",
            ["focal", "focal_sam", "focal_csam", "acls", "acls_sam", "acls_csam"],
            [
                ("Test Acc ↑", ("test", "accuracy"), "pct"),
                ("ECE ↓", ("test", "ece"), "pct"),
                ("TCE ↓", ("test", "tce"), "pct"),
            ],
        ),
        (
            "table_s16",
            "Table S16: sharpness kappa_max (top Hessian eigenvalue of the final model's cross-entropy)",
            ["ce", "focal", "label_smoothing", "sam", BEST_CSAM],
            [("ECE ↓", ("test", "ece"), "pct"), ("kappa_max", ("kappa_max",), "raw")],
        ),
        (
            "figure3a",
            "Figure 3(a): ECE before and after post-hoc calibration on validation",
            ["ce", "sam", BEST_CSAM],
            [
                ("ECE", ("test", "ece"), "pct"),
                ("ECE after temperature scaling (TCE)", ("test", "tce"), "pct"),
                ("ECE after isotonic regression", ("test", "ece_isotonic"), "pct"),
            ],
        ),
    ]
    for name, title, labels, columns in tables:
        present = present_labels(results, labels)
        if not present:
            continue
        table_lines, rows = _table(results, title, present, columns, paper.get(name), caption.get(name, ""))
        lines += table_lines
        write_csv(os.path.join(out, f"{name}.csv"), rows)
    lines += _rho_gamma_table(results, out)
    lines += _table1(results, config, out, paper.get("table1"), caption.get("table1", ""))
    if results.missing:
        lines += ["Not evaluated yet (left out): " + ", ".join(results.missing), ""]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))
    write_csv(os.path.join(out, "runs.csv"), _run_rows(results))
    _figure3(results, out)
    _reliability(results, out)
    _figure2(results, out)
    _figure_s6(results, out)
    return out


def _run_rows(results: Results) -> list[dict[str, Any]]:
    rows = []
    for label, runs in results.evals.items():
        for run in runs:
            row = {"method": label, "seed": run["seed"], "step": run["step"], "wall_time_s": run.get("wall_time_s")}
            row.update({f"test/{k}": v for k, v in run["test"].items()})
            row.update({f"val/{k}": v for k, v in run["val"].items()})
            if "kappa_max" in run:
                row["kappa_max"] = run["kappa_max"]
            for name, ood in run.get("ood", {}).items():
                if isinstance(ood, Mapping):
                    row[f"ood/{name}/auroc_max_prob"] = ood["auroc_max_prob"]
            rows.append(row)
    return rows


# Table S4 and Figure S6: (rho, gamma) -> method label; gamma 0 is SAM.
RHO_GAMMA = {
    (0.05, 0.0): "sam",
    (0.05, 0.5): "csam_g05",
    (0.05, 1.0): "csam_g10",
    (0.05, 1.5): "csam_g15",
    (0.05, 2.0): "csam_g20",
    (0.05, 2.5): "csam_g25",
    (0.05, 3.0): "csam_g30",
    (0.1, 0.0): "sam_r01",
    (0.1, 0.5): "csam_g05_r01",
    (0.1, 1.0): "csam_g10_r01",
    (0.1, 1.5): "csam_g15_r01",
    (0.1, 2.0): "csam_g20_r01",
}


def _rho_gamma_table(results: Results, out: str) -> list[str]:
    """Table S4: test accuracy and ECE over rho x gamma (rows rho, columns gamma)."""
    gammas = (0.0, 0.5, 1.0, 1.5, 2.0)
    present = {key: label for key, label in RHO_GAMMA.items() if key[1] in gammas and results.runs(label)}
    if not present:
        return []
    lines = ["### Table S4: rho x gamma (gamma 0 is SAM)", ""]
    rows = []
    for metric, title in (("accuracy", "Test Acc"), ("ece", "ECE")):
        lines += [f"{title} (%):", ""] + markdown_table(["rho"] + [f"gamma = {g:g}" for g in gammas])
        for rho in (0.05, 0.1):
            cells = []
            for gamma in gammas:
                label = present.get((rho, gamma))
                mean, std = results.stat(label, ("test", metric)) if label else (math.nan, math.nan)
                cells.append(_pct(mean, std))
                if label:
                    rows.append({"rho": rho, "gamma": gamma, "metric": metric, "mean": mean, "std": std})
            lines.append(markdown_row([f"{rho:g}"] + cells))
        lines.append("")
    write_csv(os.path.join(out, "table_s4.csv"), rows)
    return lines


def _table1(
    results: Results,
    config: ml_collections.ConfigDict,
    out: str,
    paper: Mapping[str, Any] | None,
    caption: str,
) -> list[str]:
    """Table 1: vanilla (mean over members), MC-dropout (mean over members) and the ensemble of them."""
    labels = present_labels(results, ["sgd_dropout", "sam_dropout", "csam_dropout"])
    if not labels:
        return []
    ood_names = sorted(
        {
            name
            for label in labels
            for run in results.runs(label)
            for name, v in run["ood"].items()
            if isinstance(v, Mapping)
        }
    )
    absent = sorted(
        {
            f"{name} ({v})"
            for label in labels
            for run in results.runs(label)
            for name, v in run["ood"].items()
            if isinstance(v, str)
        }
    )
    header = ["method", "prediction", "members", "Test Acc ↑", "ECE ↓"] + [f"OOD AUROC {n} ↑" for n in ood_names]
    lines = [
        f"### Table 1: MC-dropout ({config.benchmark.mc_dropout_samples} passes) and ensembles of the seeds "
        f"(dropout rate {config.methods[labels[0]].overrides.model.kwargs.dropout_rate:g}); "
        "OOD AUROC by max probability",
        "",
    ]
    if absent:
        lines += ["OOD sets absent here: " + "; ".join(absent), ""]
    if paper:
        lines += [caption, ""]
    lines += markdown_table(header)
    rows = []
    for label in labels:
        runs = results.runs(label)
        kinds = [("Vanilla", list(runs)), ("MC-Dropout", [r["mc_dropout"] for r in runs if "mc_dropout" in r])]
        for kind, evals in kinds:
            cells = [NAMES[label], kind, f"{len(evals)} seeds (mean ± std)"]
            row: dict[str, Any] = {"method": label, "prediction": kind, "runs": len(evals)}
            for key in ("accuracy", "ece"):
                mean, std = mean_std([e["test"][key] for e in evals])
                cells.append(_pct(mean, std))
                row[key], row[f"{key}_std"] = mean, std
            for name in ood_names:
                mean, std = mean_std(
                    [e["ood"][name]["auroc_max_prob"] for e in evals if isinstance(e["ood"].get(name), Mapping)]
                )
                cells.append(_pct(mean, std))
                row[f"ood_{name}"], row[f"ood_{name}_std"] = mean, std
            rows.append(row)
            lines.append(markdown_row(cells))
        ensemble = results.ensembles.get(label)
        if ensemble:
            cells = [NAMES[label], "Ensemble", f"1 ensemble of {len(ensemble['members'])}"]
            row = {"method": label, "prediction": "Ensemble", "runs": 1}
            for key in ("accuracy", "ece"):
                cells.append(f"{100 * ensemble['test'][key]:.2f}")
                row[key] = ensemble["test"][key]
            for name in ood_names:
                value = ensemble["ood"].get(name)
                cells.append(f"{100 * value['auroc_max_prob']:.2f}" if isinstance(value, Mapping) else "n/a")
                row[f"ood_{name}"] = value["auroc_max_prob"] if isinstance(value, Mapping) else None
            rows.append(row)
            lines.append(markdown_row(cells))
    write_csv(os.path.join(out, "table1.csv"), rows)
    if paper:
        lines += ["", "Paper (ResNet-18, CIFAR-10; OOD: SVHN / CIFAR-10-C / CIFAR-100-C):", ""]
        lines += markdown_table(
            ["method", "prediction", "Test Acc", "ECE", "SVHN", "CIFAR10-C", "CIFAR100-C"],
            ([method, kind] + [_paper_cell(v) for v in values] for (method, kind), values in paper.items()),
        )
    return lines + [""]


def _trio(results: Results) -> list[str]:
    return present_labels(results, ["ce", "sam", BEST_CSAM])


def _figure3(results: Results, out: str) -> None:
    labels = _trio(results)
    if not labels:
        return
    kinds = (("ece", "raw"), ("tce", "temperature"), ("ece_isotonic", "isotonic"))
    methods = {
        results.name(label): (
            [results.stat(label, ("test", key)) for key, _ in kinds],
            results.metrics[results.best_csam if label == BEST_CSAM else label],
        )
        for label in labels
    }
    plot_post_hoc_ece(methods, [kind for _, kind in kinds], os.path.join(out, "figure3.png"))


def _reliability(results: Results, out: str) -> None:
    labels = _trio(results)
    if not labels:
        return
    methods = {
        results.name(label): ([r["reliability"] for r in results.runs(label)], results.stat(label, ("test", "ece")))
        for label in labels
    }
    plot_pooled_reliability(methods, os.path.join(out, "reliability.png"))


def _figure2(results: Results, out: str) -> None:
    runs = results.metrics.get("sam_geometry")
    if not runs:
        return
    records = [r for r in runs[0] if any(k.startswith(GEOMETRY_PREFIX) for k in r)]
    if records:
        plot_sam_geometry(records, GEOMETRY_PREFIX, os.path.join(out, "figure2.png"))


def _figure_s6(results: Results, out: str) -> None:
    points = [
        (gamma, label) for (rho, gamma), label in sorted(RHO_GAMMA.items()) if rho == 0.05 and results.runs(label)
    ]
    if len(points) < 2:
        return
    plot_gamma_sweep(
        [gamma for gamma, _ in points],
        [results.stat(label, ("test", "accuracy")) for _, label in points],
        [results.stat(label, ("test", "ece")) for _, label in points],
        os.path.join(out, "figure_s6.png"),
    )
