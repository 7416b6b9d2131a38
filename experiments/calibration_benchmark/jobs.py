"""The calibration benchmark's grid: SGD's search, then every method's jobs (Tan et al. 2025, arXiv:2505.23866)."""

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from experiments.configs.calibration_benchmark import GROUPS
from experiments.grid import Job, expand_grid
from experiments.store import Kept
from sam_jax import optim
from sam_jax.training import optimizer_hparams
from sam_jax.training.writers import CONFIG_FILE, SUMMARY_FILE, to_python

EVAL_FILE = "benchmark_eval.json"
ENSEMBLE_FILE = "ensemble_eval.json"
TUNED_FILE = "tuned.json"
TUNE_DIR = "tune"
# The metrics records the report plots (Figure 3's curves, Figure 2's tracking).
PLOTTED_KEYS = ("step", "test/ece", "test/tce", "test/accuracy", "val/ece")
GEOMETRY_PREFIX = "sam_geometry/"


def _run_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The shared run config: the preset without the benchmark's own blocks."""
    base = ml_collections.ConfigDict(config.to_dict())
    for block in ("benchmark", "methods"):
        del base[block]
    return base


def _grid_config(
    config: ml_collections.ConfigDict, workdir: str, seeds: Sequence[int], optimizers: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    grid_config = _run_config(config)
    grid_config.workdir = workdir
    grid_config.grid = ml_collections.ConfigDict({"seeds": tuple(seeds), "optimizers": dict(optimizers)})
    return grid_config


def tune_jobs(config: ml_collections.ConfigDict) -> list[Job]:
    """SGD's grid search: one job per learning rate, weight decay and seed (the first
    ``benchmark.tune_seeds`` of ``benchmark.seeds``)."""
    bench = config.benchmark
    optimizers = {
        f"wd{decay:.0e}".replace("-", "m"): {
            "optimizer": "sgd",
            "learning_rates": tuple(bench.tune_learning_rates),
            "overrides": {"optimizer": {"sgd": {"weight_decay": float(decay)}}},
        }
        for decay in bench.tune_weight_decays
    }
    if not bench.tune_learning_rates:
        return []
    seeds = bench.seeds[: bench.tune_seeds]
    return expand_grid(_grid_config(config, os.path.join(config.workdir, TUNE_DIR), seeds, optimizers))


def tuned_hparams(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """``{"learning_rate", "weight_decay", ...}`` for SGD-based methods; None while the search runs.

    Without a search (empty ``benchmark.tune_learning_rates``) these are ``benchmark.learning_rate``
    and ``benchmark.weight_decay``. After it, the setting with the best mean of
    ``benchmark.tune_metric`` over its seeds (a setting with a non-finite seed is out) is written to
    ``<workdir>/tuned.json`` with every candidate and its per-seed values (and read from there
    afterwards, so that a report or another machine needs no tuning runs).
    """
    bench = config.benchmark
    if not bench.tune_learning_rates:
        return {"learning_rate": float(bench.learning_rate), "weight_decay": float(bench.weight_decay)}
    path = os.path.join(config.workdir, TUNED_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    jobs = tune_jobs(config)
    if not all(job.done for job in jobs):
        return None
    per_seed: dict[tuple[float, float], list[float | None]] = {}
    for job in jobs:
        with open(os.path.join(job.workdir, SUMMARY_FILE)) as f:
            summary = json.load(f)
        setting = (job.config.optimizer.learning_rate, job.config.optimizer.sgd.weight_decay)
        per_seed.setdefault(setting, []).append(summary.get(bench.tune_metric))
    candidates = []
    for (learning_rate, weight_decay), scores in per_seed.items():
        finite_seeds = all(v is not None and math.isfinite(v) for v in scores)
        candidate = {
            "learning_rate": learning_rate,
            "weight_decay": weight_decay,
            bench.tune_metric: float(np.mean(scores)) if finite_seeds else None,
        }
        if len(scores) > 1:
            candidate["per_seed"] = scores
        candidates.append(candidate)
    finite = [c for c in candidates if c[bench.tune_metric] is not None]
    if not finite:
        raise ValueError(f"No tuning run of {config.workdir} has a finite {bench.tune_metric!r}.")
    best = max(finite, key=lambda c: c[bench.tune_metric])
    tuned = {**best, "metric": bench.tune_metric, "candidates": candidates}
    with open(path, "w") as f:
        json.dump(to_python(tuned), f, indent=2)
    return tuned


def _reads_sgd(config: ml_collections.ConfigDict, name: str) -> bool:
    """Whether optimizer ``name`` trains with SGD's block (SGD itself, or a SAM-family wrapper of it)."""
    spec = optim.get_optimizer_spec(name)
    return name == "sgd" or "sgd" in spec.reads(optimizer_hparams(config)[name])


def _merge(target: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in updates.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            target[key] = _merge(dict(target[key]), value)
        else:
            target[key] = value
    return target


def method_jobs(config: ml_collections.ConfigDict, tuned: Mapping[str, Any], groups: Sequence[str]) -> list[Job]:
    """The jobs of every method in ``groups``, ordered by group (``GROUPS``), then seed, then method.

    Each method's learning rate is its own, or the tuned one when it is 0; methods that train with
    SGD's block (SGD and its SAM-family wrappers) also get the tuned weight decay.
    """
    jobs = []
    for label, method in config.methods.items():
        if method.group not in groups:
            continue
        overrides = method.overrides.to_dict()
        probe = _run_config(config)
        probe.optimizer.name = method.optimizer
        if _reads_sgd(probe, method.optimizer):
            overrides = _merge({"optimizer": {"sgd": {"weight_decay": float(tuned["weight_decay"])}}}, overrides)
        spec = {
            "optimizer": method.optimizer,
            "learning_rates": (float(method.learning_rate or tuned["learning_rate"]),),
            "losses": (method.loss,),
            "overrides": overrides,
        }
        seeds = tuple(method.seeds) or tuple(config.benchmark.seeds)
        jobs += expand_grid(_grid_config(config, config.workdir, seeds, {label: spec}))
    order = {group: i for i, group in enumerate(GROUPS)}
    return sorted(jobs, key=lambda job: (order[config.methods[job.group].group], job.config.seed))


def selected_groups(config: ml_collections.ConfigDict) -> list[str]:
    groups = [g.strip() for g in config.benchmark.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"benchmark.groups names {unknown}; choose from {list(GROUPS)}.")
    return groups


def all_jobs(config: ml_collections.ConfigDict) -> tuple[list[Job], list[Job]]:
    """``(tuning jobs, method jobs)``; the method jobs need the tuned values (empty until then)."""
    tuned = tuned_hparams(config)
    return tune_jobs(config), [] if tuned is None else method_jobs(config, tuned, selected_groups(config))


def grid_jobs(config: ml_collections.ConfigDict) -> list[Job]:
    """The tuning jobs, then the method jobs (these once the search is complete).

    Raises:
      ValueError: ``benchmark.groups`` names an unknown group.
    """
    selected_groups(config)
    tuning, jobs = all_jobs(config)
    return tuning + jobs


def keep(config: ml_collections.ConfigDict, job: Job) -> Kept:
    """What the report reads of a finished job: its evaluation and, of a method's run, the plotted records."""
    if job.group not in config.methods:  # a tuning run: its summary is the search's score
        return Kept(files=(CONFIG_FILE, SUMMARY_FILE, EVAL_FILE))
    return Kept(
        files=(CONFIG_FILE, SUMMARY_FILE, EVAL_FILE),
        metrics=lambda key: key in PLOTTED_KEYS or key.startswith(GEOMETRY_PREFIX),
    )


def grid_files(config: ml_collections.ConfigDict) -> list[str]:
    """The search's result and each ensemble's evaluation, relative to the workdir."""
    return [TUNED_FILE] + [os.path.join(label, ENSEMBLE_FILE) for label in config.methods]
