"""Each run of the curvature-calibration grid: its records, length, interpolation, tracking and
Lanczos check (``runs.csv``, ``protocol.md``)."""

import collections
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import ml_collections

from experiments.curvature_calibration.protocol import (
    FIRST_STEP_REACHED,
    GN_SHARPNESS,
    HIGHEST_ECE_AFTER,
    INTERPOLATION_ACCURACY,
    LATE_DIP_ACCURACY,
    LOWEST_ACCURACY_AFTER,
    PRE_INTERPOLATION_ACCURACY,
    first_step_at,
)
from experiments.grid import Job
from sam_jax.training import read_metrics
from sam_jax.training.writers import CONFIG_FILE, METRICS_FILE


def load_run(job: Job) -> tuple[list[dict[str, Any]], bool]:
    """The job's metric records and whether it diverged; no records when it never started."""
    if not os.path.exists(os.path.join(job.workdir, METRICS_FILE)):
        return [], False
    return read_metrics(job.workdir), bool(job.summary().get("diverged", False))


def _stop_reason(config: ml_collections.ConfigDict, records: Sequence[Mapping[str, Any]], last: int) -> str:
    """Why a finished run ended at step ``last``: its early-stop rule (target, horizon, loss floor) or the cap."""
    rule = config.early_stop
    final = next((r for r in reversed(records) if r["step"] == last and rule.below_metric in r), {})
    if rule.below_metric and final.get(rule.below_metric, math.inf) < rule.below:
        return f"{rule.below_metric} < {rule.below:g}"
    if last >= config.num_steps:
        return "step cap"
    if rule.metric and rule.get("horizon_factor", 0):
        return f"{rule.horizon_factor:g} x first step at {rule.metric} >= {rule.at_least:g}"
    return f"{rule.metric} >= {rule.at_least:g}" if rule.metric else "step cap"


def _value_at(records: Sequence[Mapping[str, Any]], key: str, step: int) -> float:
    return next((float(r[key]) for r in records if r["step"] == step and key in r), math.nan)


def _after_reaching(records: Sequence[Mapping[str, Any]], accuracy: float) -> tuple[float, float, float]:
    """The first step with train accuracy >= ``accuracy``, then the lowest train accuracy and the
    highest train ECE at the records after it (NaN where the run never got there)."""
    evaluated = [r for r in records if "train/accuracy" in r]
    first = first_step_at(evaluated, accuracy)
    if first is None:
        return math.nan, math.nan, math.nan
    later = [r for r in evaluated if r["step"] > first]
    return (
        float(first),
        min((float(r["train/accuracy"]) for r in later), default=math.nan),
        max((float(r["train/ece"]) for r in later if "train/ece" in r), default=math.nan),
    )


def _guard_vectors(job: Job) -> int:
    """The guard vectors the job was tracked with: from the config saved in its directory (a run
    tracked before the field existed had none), or from the grid's config when none was saved."""
    curvature = job.config.curvature.to_dict()
    path = os.path.join(job.workdir, CONFIG_FILE)
    if os.path.exists(path):
        with open(path) as f:
            curvature = json.load(f).get("curvature", {})
    return int(curvature.get("guard_vectors", 0)) if curvature.get("warm_start") else 0


def run_rows(jobs: Sequence[Job], loaded: dict[str, tuple[list, bool]]) -> list[dict[str, Any]]:
    """One row per job that ran: length, interpolation, tracking, lambda_0 and the Lanczos check."""
    rows = []
    for job in jobs:
        records, diverged = loaded[job.name]
        if not records:
            continue
        tracked = [r for r in records if GN_SHARPNESS in r]
        last = max(r["step"] for r in records)
        references = [
            abs(r[GN_SHARPNESS] - r[f"{GN_SHARPNESS}_reference"]) / abs(r[f"{GN_SHARPNESS}_reference"])
            for r in tracked
            if f"{GN_SHARPNESS}_reference" in r
        ]
        steps = [
            r["curvature/gauss_newton_lanczos_steps"] for r in tracked if "curvature/gauss_newton_lanczos_steps" in r
        ]
        accuracy = _value_at(records, "train/accuracy", last)
        reached, lowest_after, highest_ece_after = _after_reaching(records, PRE_INTERPOLATION_ACCURACY)
        interpolated_at = first_step_at(records, INTERPOLATION_ACCURACY)
        summary = job.summary()
        target = job.config.early_stop.at_least if job.config.early_stop.metric else math.nan
        rows.append(
            {
                "job": job.name,
                "optimizer": job.group,
                "loss": job.config.loss.name,
                "learning_rate": job.config.optimizer.learning_rate,
                "seed": job.config.seed,
                "finished": job.done,
                "diverged": diverged,
                "last_step": last,
                "max_steps": job.config.num_steps,
                "final_train_accuracy": accuracy,
                "interpolated": accuracy >= target,
                "final_train_ece": _value_at(records, "train/ece", last),
                "final_train_loss": _value_at(records, "train/loss", last),
                f"first_step_at_train_accuracy_{INTERPOLATION_ACCURACY:g}": (
                    math.nan if interpolated_at is None else interpolated_at
                ),
                "stop_reason": _stop_reason(job.config, records, last) if job.done and not diverged else "",
                "wall_time_s": summary.get("wall_time_s", math.nan),
                "device": summary.get("device", ""),
                # wall_time_s is the last process's: a job resumed at step > 0 ran longer in all.
                "resumed_from_step": summary.get("resumed_from_step", math.nan),
                FIRST_STEP_REACHED: reached,
                LOWEST_ACCURACY_AFTER: lowest_after,
                HIGHEST_ECE_AFTER: highest_ece_after,
                "tracked_points": len(tracked),
                "lambda_0": _value_at(records, GN_SHARPNESS, 0),
                "peak_gn_sharpness": max((r[GN_SHARPNESS] for r in tracked), default=math.nan),
                "lanczos_steps_mean": float(sum(steps) / len(steps)) if steps else math.nan,
                "lanczos_steps_first": steps[0] if steps else math.nan,
                "guard_vectors": _guard_vectors(job),
                "reference_checks": len(references),
                "max_relative_deviation_from_reference": max(references, default=math.nan),
            }
        )
    return rows


def protocol_report(
    config: ml_collections.ConfigDict, rows: Sequence[Mapping[str, Any]], plain_groups: Collection[str]
) -> str:
    """Markdown: lambda_0 against 2/lr (over the runs of ``plain_groups``), interpolation per run
    group, the Lanczos accuracy check."""
    lines = ["## Initial GN sharpness lambda_0 and the learning rates of the plain gradient methods", ""]
    lines += [
        "| loss | seed | lambda_0 | largest plain-method lr | its 2/lr | 2/lr > lambda_0 |",
        "|---|---|---|---|---|---|",
    ]
    for (loss, seed), group in _by(rows, ("loss", "seed")).items():
        lambda_0 = max(r["lambda_0"] for r in group)
        plain = [r["learning_rate"] for r in group if r["optimizer"] in plain_groups]
        if plain and not math.isnan(lambda_0):
            top = max(plain)
            lines.append(f"| {loss} | {seed} | {lambda_0:.3f} | {top:.4g} | {2 / top:.4g} | {2 / top > lambda_0} |")
    lines += ["", "## Runs: steps, interpolation, tracked points", ""]
    lines += [
        "| optimizer | loss | lr | seeds run | finished | interpolated | last step (per seed) | tracked points (min) "
        "| peak GN sharpness (per seed) | final train ECE (per seed) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (optimizer, loss, lr), group in _by(rows, ("optimizer", "loss", "learning_rate")).items():
        lines.append(
            f"| {optimizer} | {loss} | {lr:.4g} | {len(group)} | {sum(r['finished'] for r in group)} | "
            f"{sum(bool(r['interpolated']) for r in group)} | {', '.join(str(r['last_step']) for r in group)} | "
            f"{min(r['tracked_points'] for r in group)} | "
            f"{', '.join(format(r['peak_gn_sharpness'], '.4g') for r in group)} | "
            f"{', '.join(format(r['final_train_ece'], '.3f') for r in group)} |"
        )
    lines += ["", _final_ece_and_dips(rows)]
    deviations = [r["max_relative_deviation_from_reference"] for r in rows if r["reference_checks"]]
    checks = sum(r["reference_checks"] for r in rows)
    if checks:
        cold = [r["lanczos_steps_first"] for r in rows if not math.isnan(r["lanczos_steps_first"])]
        mean = [r["lanczos_steps_mean"] for r in rows if not math.isnan(r["lanczos_steps_mean"])]
        lines += [
            "",
            "## Lanczos accuracy",
            "",
            f"GN sharpness: Lanczos stops once the top Ritz residual, a bound on the eigenvalue's error, is "
            f"below {config.curvature.tolerance:g} of the value (at most {config.curvature.num_iters} steps; warm "
            f"start: {config.curvature.warm_start}). "
            f"{checks} tracked values were checked against a cold run with 3x the maximum steps: the "
            f"largest relative deviation is {max(deviations):.2e} (runs with a check: {len(deviations)}). "
            f"Lanczos steps per estimate: {sum(cold) / len(cold):.1f} at the first (cold) point, "
            f"{sum(mean) / len(mean):.1f} on average over all points.",
        ]
        for guard, group in sorted(_by([r for r in rows if r["reference_checks"]], ["guard_vectors"]).items()):
            lines.append(
                f"- tracked with {guard[0]} guard vector(s): {len(group)} runs, "
                f"{sum(r['reference_checks'] for r in group)} checks, largest relative deviation "
                f"{max(r['max_relative_deviation_from_reference'] for r in group):.2e}"
            )
    return "\n".join(lines)


def _final_ece_and_dips(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: final train ECE per optimizer and loss, and the runs that lost train accuracy late."""
    lines = [
        "## Final train ECE and late dips",
        "",
        f"A run dips when its train accuracy, after first reaching {PRE_INTERPOLATION_ACCURACY:g}, falls below "
        f"{LATE_DIP_ACCURACY:g} at a later tracked point; lowest accuracy and highest train ECE are "
        "taken over the tracked points after that first step.",
        "",
        "| optimizer | loss | runs | final train ECE: mean (min-max) | runs that dip | lowest train accuracy "
        "after dipping (min-max) | highest train ECE after dipping (min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (optimizer, loss), group in _by(rows, ("optimizer", "loss")).items():
        final = [r["final_train_ece"] for r in group if not math.isnan(r["final_train_ece"])]
        dips = [r for r in group if r[LOWEST_ACCURACY_AFTER] < LATE_DIP_ACCURACY]
        lowest = [r[LOWEST_ACCURACY_AFTER] for r in dips]
        highest = [r[HIGHEST_ECE_AFTER] for r in dips]
        lines.append(
            f"| {optimizer} | {loss} | {len(group)} | "
            + (f"{sum(final) / len(final):.3f} ({min(final):.3f}-{max(final):.3f})" if final else "-")
            + f" | {len(dips)} | "
            + (f"{min(lowest):.3f}-{max(lowest):.3f} | {min(highest):.3f}-{max(highest):.3f} |" if dips else "- | - |")
        )
    return "\n".join(lines)


def _by(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[tuple, list]:
    groups: dict[tuple, list] = collections.defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups
