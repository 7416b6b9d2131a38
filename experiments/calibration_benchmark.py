"""Tan et al. (2026, arXiv:2505.23866): SAM calibrates better than SGD, CSAM better still, than every baseline.

    python -m experiments.calibration_benchmark --config=experiments/configs/calibration_benchmark.py:quick
    python -m experiments.calibration_benchmark --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.calibration_benchmark --config=...:fmnist --mode=report

``run`` trains one shard of the grid. First SGD's grid search over learning rate and weight decay
(App. C; the best validation accuracy is written to ``<workdir>/tuned.json``; a shard that finishes
its part of the search first waits for the others), then every method of ``config.methods`` in the
groups of ``benchmark.groups``, seeds first within a group, each run resumable. Every finished run is
evaluated at once into ``<job>/benchmark_eval.json``: test accuracy, ECE, classwise ECE, adaptive
ECE, TCE (ECE after temperature scaling on the validation set), ECE after isotonic regression,
AUROC, reliability-diagram bins, for Table S16's methods the top Hessian eigenvalue kappa_max of
the final model, OOD AUROC on the OOD sets present and, for the dropout models of Table 1, the same under
MC-dropout. A group whose members are seeds of one ensemble (Table 1) gets ``ensemble_eval.json``.

``report`` writes ``<workdir>/report/``: the tables shaped like the paper's (Table 3 / S5, S11 / S12,
S13, S15, S4, Table 1, S16; Markdown in ``report.md`` and one CSV each) with the paper's numbers
beside ours, Figure 3 (ECE raw / temperature-scaled / isotonic; ECE and TCE over training), the
reliability diagrams of SGD, SAM and CSAM, Figure 2 (kappa_min at theta and at the SAM point, along
the path between them, lambda and lambda_0 of eq. 2 during training) and Figure S6 (the gamma
sweep). ``export`` copies what the report reads (configs, summaries, evaluations, the metrics
records it plots) to ``<workdir>/compact``: small enough to commit, and ``report`` rebuilds the
report from it. ``all`` (default) runs, then reports.
"""

import collections
import json
import math
import os
import shutil
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import cli  # noqa: E402
from experiments.configs.calibration_benchmark import GROUPS, NAMES  # noqa: E402
from experiments.grid import Job, RunDataCache, data_key, expand_grid, parse_shard, run_jobs, shard_jobs  # noqa: E402
from experiments.tables import markdown_row, markdown_table, write_csv  # noqa: E402
from sam_jax import calibration, data, optim  # noqa: E402
from sam_jax.losses import get_loss  # noqa: E402
from sam_jax.training import (  # noqa: E402
    Checkpointer,
    Hook,
    Run,
    TrainState,
    load_trained,
    make_predictive,
    optimizer_hparams,
    read_metrics,
)
from sam_jax.training.config import chosen_hparams  # noqa: E402
from sam_jax.training.hooks import default_curvature_config, make_curvature_tracker, make_sam_geometry_tracker  # noqa: E402
from sam_jax.training.writers import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, to_python  # noqa: E402

MODES = ("run", "report", "export", "all")
EVAL_FILE = "benchmark_eval.json"
ENSEMBLE_FILE = "ensemble_eval.json"
TUNED_FILE = "tuned.json"
TUNE_DIR = "tune"
# The metrics records the report plots (Figure 3's curves, Figure 2's tracking).
PLOTTED_KEYS = ("step", "test/ece", "test/tce", "test/accuracy", "val/ece")
GEOMETRY_PREFIX = "sam_geometry/"
# The columns of Table 3 / S5 (in %), and the suite's key of each.
TABLE3_COLUMNS = (
    ("Test Acc ↑", "accuracy"),
    ("ECE ↓", "ece"),
    ("ClasswiseECE ↓", "classwise_ece"),
    ("AdaECE ↓", "adaptive_ece"),
    ("TCE ↓", "tce"),
    ("AUROC ↑", "auroc_ovr"),
)
CSAM_GAMMAS = {"csam_g05": 0.5, "csam_g10": 1.0, "csam_g20": 2.0}
BEST_CSAM = "csam_best"


# ----------------------------------------------------------------------------------------------
# The grid.


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


def tuned_hparams(config: ml_collections.ConfigDict) -> Optional[dict[str, Any]]:
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
    per_seed: dict[tuple[float, float], list[Optional[float]]] = {}
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


# ----------------------------------------------------------------------------------------------
# Evaluation.


def calibration_suite(
    probs: np.ndarray, labels: np.ndarray, val_probs: np.ndarray, val_labels: np.ndarray, num_bins: int
) -> dict[str, float]:
    """The tables' metrics of predictive probabilities, with post-hoc scaling fitted on validation.

    ``tce`` is the ECE after temperature scaling (Guo et al. 2017) and ``ece_isotonic`` after
    isotonic regression (Zadrozny & Elkan 2002), both fitted on the validation set (Figure 3);
    ``auroc_ovr`` is the macro one-vs-rest AUROC (our reading of Table 3's AUROC column) and
    ``auroc_misclassification`` the AUROC of correct vs. wrong predictions by confidence.
    """
    tiny = np.finfo(np.float32).tiny
    log_probs = jnp.log(jnp.maximum(jnp.asarray(probs, jnp.float32), tiny))
    val_log_probs = jnp.log(jnp.maximum(jnp.asarray(val_probs, jnp.float32), tiny))
    metrics = calibration.calibration_metrics(
        log_probs, labels, val_logits=val_log_probs, val_labels=val_labels, num_bins=num_bins
    )
    isotonic = calibration.fit_isotonic(val_probs, val_labels)
    keep = ("accuracy", "ece", "classwise_ece", "adaptive_ece", "tce", "temperature", "nll", "brier", "mean_confidence")
    suite = {k: metrics[k] for k in keep}
    suite["ece_isotonic"] = float(calibration.ece(isotonic(jnp.asarray(probs)), labels, num_bins))
    suite["auroc_ovr"] = float(calibration.one_vs_rest_auroc(jnp.asarray(probs), labels))
    suite["auroc_misclassification"] = float(calibration.misclassification_auroc(jnp.asarray(probs), labels))
    return suite


def _as_model_input(dataset: data.ArrayDataset, shape: Sequence[int]) -> data.ArrayDataset:
    """An OOD set resized (bilinear) and given the channel count of the model's input ``[H, W, C]``."""
    images = np.asarray(dataset.images, np.float32)
    height, width, channels = shape
    if images.shape[1:3] != (height, width):
        images = np.asarray(jax.image.resize(images, (len(images), height, width, images.shape[-1]), method="bilinear"))
    if images.shape[-1] != channels:
        if images.shape[-1] == 1:
            images = np.repeat(images, channels, axis=-1)
        elif channels == 1:
            images = images.mean(axis=-1, keepdims=True)
        else:
            raise ValueError(f"Cannot map {images.shape[-1]} channels to {channels}.")
    images = np.clip(np.round(images), 0, 255).astype(dataset.images.dtype)
    return data.ArrayDataset(images, dataset.labels, dataset.num_classes)


def load_ood_sets(names: str, run: Run) -> dict[str, Any]:
    """``name -> prepared test split`` of each OOD set in ``names`` whose files are present, else why not.

    Images are resized (bilinear) to the model's input size and channel count, then standardised
    with the training statistics; CIFAR-10-C contributes its Gaussian-noise corruption at severity 5.
    """
    sets: dict[str, Any] = {}
    in_distribution = run.config.data.name
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name == in_distribution:
            raise ValueError(f"benchmark.ood names the training dataset {name!r}.")
        try:
            split = "gaussian_noise_5" if name == "cifar10_corrupted" else "test"
            ood = data.load_dataset(name, split, download=False)
        except (FileNotFoundError, OSError) as err:
            sets[name] = f"absent: {str(err).splitlines()[0]}"
            continue
        sets[name] = run.data.prepare(_as_model_input(ood, run.data.test.images.shape[1:]))
    return sets


def _ood_aurocs(test_probs: np.ndarray, ood_probs: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, probs in ood_probs.items():
        if isinstance(probs, str):
            result[name] = probs
            continue
        result[name] = {
            "auroc_max_prob": float(
                calibration.auroc(
                    calibration.max_probability_score(jnp.asarray(test_probs)),
                    calibration.max_probability_score(jnp.asarray(probs)),
                )
            ),
            "auroc_entropy": float(
                calibration.auroc(
                    calibration.negative_entropy_score(jnp.asarray(test_probs)),
                    calibration.negative_entropy_score(jnp.asarray(probs)),
                )
            ),
            "num_ood": int(len(probs)),
        }
    return result


def _predict_all(predict, run: Run, ood_sets: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    val_probs, test_probs = predict(run.data.val), predict(run.data.test)
    ood = {name: (ds if isinstance(ds, str) else predict(ds)) for name, ds in ood_sets.items()}
    return val_probs, test_probs, ood


def _evaluation(
    run: Run, val_probs: np.ndarray, test_probs: np.ndarray, ood: Mapping[str, Any], num_bins: int
) -> dict[str, Any]:
    test_labels, val_labels = run.data.test.labels, run.data.val.labels
    bins = calibration.bin_statistics(jnp.asarray(test_probs), test_labels, num_bins)
    return {
        "test": calibration_suite(test_probs, test_labels, val_probs, val_labels, num_bins),
        "val": {
            "accuracy": float(calibration.accuracy(jnp.asarray(val_probs), val_labels)),
            "ece": float(calibration.ece(jnp.asarray(val_probs), val_labels, num_bins)),
        },
        "reliability": {name: np.asarray(value).tolist() for name, value in bins._asdict().items()},
        "ood": _ood_aurocs(test_probs, ood),
    }


def sharpness(run: Run, state: TrainState, examples: int, num_iters: int) -> float:
    """kappa_max (Table S16): the top Hessian eigenvalue of the cross-entropy of the final model's
    predictions on the first ``examples`` training examples (Lanczos, ``num_iters`` steps)."""
    block = default_curvature_config()
    block.every = 1
    block.quantities = "hessian"
    block.num_iters = num_iters
    loss_state = state.loss_state

    def model_apply(params: Any, model_state: Any, images: jax.Array) -> jax.Array:
        return run.loss.predict(run.eval_step(params, model_state, images), loss_state)

    tracker = make_curvature_tracker(block, model_apply, get_loss("cross_entropy"), batch_size=run.batch_size)
    train = run.data.train
    metrics = tracker(
        state.params,
        state.model_state,
        jnp.asarray(train.images[:examples]),
        jnp.asarray(train.labels[:examples]),
        jax.random.PRNGKey(0),
    )
    return float(metrics["curvature/hessian_top1"])


def _sharpness_settings(bench: ml_collections.ConfigDict) -> dict[str, int]:
    return {"examples": int(bench.sharpness_examples), "num_iters": int(bench.sharpness_iters)}


def wants_sharpness(job: Job, bench: ml_collections.ConfigDict) -> bool:
    """Whether kappa_max is measured for ``job``: only for ``benchmark.sharpness_methods`` (Table S16's),
    since one estimate costs about as much as a few hundred training steps."""
    return job.group in {m.strip() for m in bench.sharpness_methods.split(",")}


def sharpness_entry(job: Job, run: Run, state: TrainState, bench: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"kappa_max", "kappa_max_settings"}`` of a job of ``benchmark.sharpness_methods``, else ``{}``."""
    if not wants_sharpness(job, bench):
        return {}
    return {
        "kappa_max": sharpness(run, state, bench.sharpness_examples, bench.sharpness_iters),
        "kappa_max_settings": _sharpness_settings(bench),
    }


def evaluate_job(
    job: Job, run: Run, state: TrainState, bench: ml_collections.ConfigDict, ood_sets: Mapping[str, Any]
) -> dict[str, Any]:
    """Evaluates a job's final state and writes ``<job>/benchmark_eval.json`` (see the module docstring)."""
    num_bins = job.config.num_bins
    predict = make_predictive([(run, state)], posterior_samples=bench.posterior_samples)
    val_probs, test_probs, ood = _predict_all(predict, run, ood_sets)
    result: dict[str, Any] = {
        "job": job.name,
        "method": job.group,
        "seed": job.config.seed,
        "step": int(state.step),
        "predictive": "posterior" if run.optimizer.posterior_sample is not None else "point",
        **_evaluation(run, val_probs, test_probs, ood, num_bins),
        **sharpness_entry(job, run, state, bench),
    }
    if job.config.model.kwargs.get("dropout_rate", 0.0) > 0:
        mc = make_predictive([(run, state)], mc_dropout_samples=bench.mc_dropout_samples, seed=job.config.seed)
        result["mc_dropout"] = _evaluation(run, *_predict_all(mc, run, ood_sets), num_bins)
    with open(os.path.join(job.workdir, SUMMARY_FILE)) as f:
        result["wall_time_s"] = json.load(f).get("wall_time_s")
    with open(os.path.join(job.workdir, EVAL_FILE), "w") as f:
        json.dump(to_python(result), f, indent=2)
    return result


class Evaluator:
    """Evaluates finished jobs (as the grid's ``after_job`` and afterwards), caching the OOD sets."""

    def __init__(self, bench: ml_collections.ConfigDict, run_data: Optional[RunDataCache] = None):
        self.bench = bench
        self.ood_sets: dict[str, dict[str, Any]] = {}
        self.run_data = run_data or RunDataCache()

    def _ood(self, job: Job, run: Run) -> Mapping[str, Any]:
        key = data_key(job.config)
        if key not in self.ood_sets:
            self.ood_sets[key] = load_ood_sets(self.bench.ood, run)
        return self.ood_sets[key]

    def after_job(self, job: Job, run: Run) -> None:
        checkpointer = Checkpointer(job.workdir)
        try:
            state = checkpointer.restore(run.init_state)
        finally:
            checkpointer.close()
        evaluate_job(job, run, state, self.bench, self._ood(job, run))

    def finished(self, jobs: Sequence[Job]) -> None:
        """Evaluates every trained job with a checkpoint and no evaluation yet, and re-measures the
        kappa_max of evaluated ones whose kappa_max is missing or was measured with other settings."""
        for job in jobs:
            if not _trained(job):
                continue
            path = os.path.join(job.workdir, EVAL_FILE)
            if not os.path.exists(path):
                run, state = load_trained(job.workdir, run_data=self.run_data(job.config))
                evaluate_job(job, run, state, self.bench, self._ood(job, run))
                continue
            with open(path) as f:
                result = json.load(f)
            stale = result.get("kappa_max_settings") != _sharpness_settings(self.bench)
            if wants_sharpness(job, self.bench) and stale:
                run, state = load_trained(job.workdir, run_data=self.run_data(job.config))
                result.update(sharpness_entry(job, run, state, self.bench))
            elif not wants_sharpness(job, self.bench) and "kappa_max" in result:
                result.pop("kappa_max")
                result.pop("kappa_max_settings", None)
            else:
                continue
            with open(path, "w") as f:
                json.dump(to_python(result), f, indent=2)

    def ensembles(self, config: ml_collections.ConfigDict, jobs: Sequence[Job]) -> None:
        """Table 1's ensembles: the members (seeds) of each ``ood``-group method, once all are trained."""
        by_method = collections.defaultdict(list)
        for job in jobs:
            if config.methods[job.group].group == "ood":
                by_method[job.group].append(job)
        for label, members in by_method.items():
            path = os.path.join(config.workdir, label, ENSEMBLE_FILE)
            if os.path.exists(path) or not all(_trained(job) for job in members):
                continue
            trained = [load_trained(job.workdir, run_data=self.run_data(job.config)) for job in members]
            run = trained[0][0]
            predict = make_predictive(trained)
            result = {
                "method": label,
                "members": [job.name for job in members],
                **_evaluation(run, *_predict_all(predict, run, self._ood(members[0], run)), config.num_bins),
            }
            with open(path, "w") as f:
                json.dump(to_python(result), f, indent=2)


def _trained(job: Job) -> bool:
    if not job.done or not os.path.isdir(os.path.join(job.workdir, "checkpoints")):
        return False
    with open(os.path.join(job.workdir, SUMMARY_FILE)) as f:
        return not json.load(f).get("diverged")


def geometry_hooks(config: ml_collections.ConfigDict):
    """``hooks(job, run)`` for the grid: Figure 2's tracking on the ``figure2`` group's runs."""
    bench = config.benchmark

    def hooks(job: Job, run: Run) -> Sequence[Hook]:
        if config.methods[job.group].group != "figure2":
            return ()
        job_config = job.config
        rho = run.optimizer.perturbation_radius(optimizer_hparams(job_config)[job_config.optimizer.name])
        if rho is None:
            raise ValueError(f"Figure 2's method {job.group!r} must be a SAM-family optimizer (it has no rho).")
        tracker = make_sam_geometry_tracker(
            run.eval_step,
            get_loss(job_config.loss.name, **chosen_hparams(job_config.loss)),
            rho,
            num_iters=bench.geometry_iters,
            per_example=bench.geometry_examples,
        )
        train = run.data.train
        images = jnp.asarray(train.images[: bench.geometry_examples])
        labels = jnp.asarray(train.labels[: bench.geometry_examples])
        key = jax.random.PRNGKey(job_config.seed)

        def track(state: TrainState) -> Mapping[str, float]:
            return tracker(state.params, state.model_state, images, labels, jax.random.fold_in(key, state.step))

        return (Hook(bench.geometry_every, track),)

    return hooks


# ----------------------------------------------------------------------------------------------
# Run and export.


def all_jobs(config: ml_collections.ConfigDict) -> tuple[list[Job], list[Job]]:
    """``(tuning jobs, method jobs)``; the method jobs need the tuned values (empty until then)."""
    tuned = tuned_hparams(config)
    return tune_jobs(config), [] if tuned is None else method_jobs(config, tuned, selected_groups(config))


def run_shard(config: ml_collections.ConfigDict, index: int, count: int, poll_s: float = 30.0) -> None:
    """Trains and evaluates shard ``index`` of ``count``: its tuning jobs, then (once the search is
    complete, waiting for the other shards' part) its method jobs."""
    groups = selected_groups(config)
    run_data = RunDataCache()
    evaluator = Evaluator(config.benchmark, run_data)
    cache_dir = os.path.join(config.workdir, "jax_cache")
    tuning = (
        tune_jobs(config) if "tune" in groups or not os.path.exists(os.path.join(config.workdir, TUNED_FILE)) else []
    )
    run_jobs(shard_jobs(tuning, index, count), compilation_cache_dir=cache_dir, run_data=run_data)
    tuned = tuned_hparams(config)
    while tuned is None:
        time.sleep(poll_s)
        tuned = tuned_hparams(config)
    jobs = shard_jobs(method_jobs(config, tuned, groups), index, count)
    evaluator.finished(jobs)  # trained before an interruption cut their evaluation short
    run_jobs(
        jobs,
        compilation_cache_dir=cache_dir,
        after_job=evaluator.after_job,
        hooks=geometry_hooks(config),
        run_data=run_data,
    )
    evaluator.finished(jobs)
    evaluator.ensembles(config, method_jobs(config, tuned, groups))


def export(config: ml_collections.ConfigDict) -> str:
    """Copies what the report reads to ``<workdir>/compact`` (laid out like the grid); returns it."""
    out = os.path.join(config.workdir, "compact")
    tuning, jobs = all_jobs(config)
    if os.path.exists(os.path.join(config.workdir, TUNED_FILE)):
        os.makedirs(out, exist_ok=True)
        shutil.copyfile(os.path.join(config.workdir, TUNED_FILE), os.path.join(out, TUNED_FILE))
    for job in tuning + jobs:
        if not job.done:
            continue
        target = os.path.join(out, os.path.relpath(job.workdir, config.workdir))
        os.makedirs(target, exist_ok=True)
        for name in (CONFIG_FILE, SUMMARY_FILE, EVAL_FILE):
            if os.path.exists(os.path.join(job.workdir, name)):
                shutil.copyfile(os.path.join(job.workdir, name), os.path.join(target, name))
        if job in jobs:
            with open(os.path.join(target, METRICS_FILE), "w") as f:
                for record in read_metrics(job.workdir):
                    kept = {k: v for k, v in record.items() if k in PLOTTED_KEYS or k.startswith(GEOMETRY_PREFIX)}
                    if len(kept) > 1:
                        f.write(json.dumps(kept) + "\n")
    for label in {job.group for job in jobs}:
        path = os.path.join(config.workdir, label, ENSEMBLE_FILE)
        if os.path.exists(path):
            shutil.copyfile(path, os.path.join(out, label, ENSEMBLE_FILE))
    return out


# ----------------------------------------------------------------------------------------------
# Report.


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return (float(np.mean(values)), float(np.std(values))) if values else (math.nan, math.nan)


def _pct(mean: float, std: float) -> str:
    return "n/a" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _paper_cell(value: Optional[tuple[float, float]]) -> str:
    return "—" if value is None else f"{value[0]:.2f} ± {value[1]:.2f}"


class Results:
    """Every evaluation of a grid by method (seed-ordered), with the CSAM chosen on validation."""

    def __init__(self, config: ml_collections.ConfigDict, jobs: Sequence[Job]):
        self.config = config
        self.evals: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        self.missing: list[str] = []
        self.metrics: dict[str, list[list[dict[str, Any]]]] = collections.defaultdict(list)
        for job in jobs:
            path = os.path.join(job.workdir, EVAL_FILE)
            if not os.path.exists(path):
                self.missing.append(job.name)
                continue
            with open(path) as f:
                self.evals[job.group].append(json.load(f))
            self.metrics[job.group].append(read_metrics(job.workdir))
        self.ensembles = {}
        for label in self.evals:
            path = os.path.join(config.workdir, label, ENSEMBLE_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    self.ensembles[label] = json.load(f)
        self.best_csam = self._choose_csam()

    def _choose_csam(self) -> Optional[str]:
        """The CSAM gamma of Table 3 with the lowest mean validation ECE (the paper tunes gamma in
        {0.5, 1, 2}; we choose on validation, never on test)."""
        scored = [
            (_mean_std([e["val"]["ece"] for e in self.evals[label]])[0], label)
            for label in CSAM_GAMMAS
            if self.evals.get(label)
        ]
        return min(scored)[1] if scored else None

    def runs(self, label: str) -> list[dict[str, Any]]:
        if label == BEST_CSAM:
            return self.evals.get(self.best_csam, []) if self.best_csam else []
        return self.evals.get(label, [])

    def name(self, label: str) -> str:
        if label == BEST_CSAM:
            return f"CSAM (gamma {CSAM_GAMMAS[self.best_csam]:g}, chosen on val)" if self.best_csam else "CSAM"
        return NAMES[label]

    def stat(self, label: str, path: Sequence[str]) -> tuple[float, float]:
        def get(run):
            value = run
            for key in path:
                if not isinstance(value, Mapping) or key not in value:
                    return None
                value = value[key]
            return value

        return _mean_std([get(run) for run in self.runs(label)])


def _table(
    results: Results,
    title: str,
    labels: Sequence[str],
    columns: Sequence[tuple[str, Sequence[str], str]],
    paper: Optional[Mapping[str, Sequence[Optional[tuple[float, float]]]]],
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
            cells.append(
                _pct(mean, std) if fmt == "pct" else ("n/a" if math.isnan(mean) else f"{mean:.3g} ± {std:.2g}")
            )
            row[f"{'.'.join(path)}_mean"], row[f"{'.'.join(path)}_std"] = mean, std
            if paper:
                cells.append(_paper_cell((paper.get(label) or [None] * len(columns))[i]))
        rows.append(row)
        lines.append(markdown_row(cells))
    return lines + [""], rows


def _present(results: Results, labels: Sequence[str]) -> list[str]:
    return [label for label in labels if results.runs(label)]


def report(config: ml_collections.ConfigDict) -> str:
    """Writes the tables and figures to ``<workdir>/report``; returns that directory.

    Raises:
      ValueError: the search is unfinished, or no job has been evaluated yet.
    """
    from experiments.configs.calibration_benchmark import paper_tables  # noqa: PLC0415

    _, jobs = all_jobs(config)
    if not jobs:
        raise ValueError(f"{config.workdir} has no {TUNED_FILE} and its search is unfinished; run --mode=run first.")
    results = Results(config, jobs)
    if not results.evals:
        raise ValueError(f"No job under {config.workdir} has {EVAL_FILE}; run --mode=run first.")
    out = os.path.join(config.workdir, "report")
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
        present = _present(results, labels)
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
    _reliability(results, config.num_bins, out)
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
    paper: Optional[Mapping[str, Any]],
    caption: str,
) -> list[str]:
    """Table 1: vanilla (mean over members), MC-dropout (mean over members) and the ensemble of them."""
    labels = _present(results, ["sgd_dropout", "sam_dropout", "csam_dropout"])
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
                mean, std = _mean_std([e["test"][key] for e in evals])
                cells.append(_pct(mean, std))
                row[key], row[f"{key}_std"] = mean, std
            for name in ood_names:
                mean, std = _mean_std(
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


def _curve(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return (
        (np.array([p[0] for p in points]), np.array([p[1] for p in points])) if points else (np.array([]), np.array([]))
    )


def _mean_curve(runs: Sequence[Sequence[Mapping[str, Any]]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    curves = [_curve(records, key) for records in runs]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return np.array([]), np.array([]), np.array([])
    steps = curves[0][0]
    stacked = np.stack([np.interp(steps, s, v) for s, v in curves])
    return steps, stacked.mean(axis=0), stacked.std(axis=0)


def _trio(results: Results) -> list[str]:
    return _present(results, ["ce", "sam", BEST_CSAM])


def _figure3(results: Results, out: str) -> None:
    labels = _trio(results)
    if not labels:
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    kinds = (("ece", "raw"), ("tce", "temperature"), ("ece_isotonic", "isotonic"))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        stats = [results.stat(label, ("test", key)) for key, _ in kinds]
        axes[0].bar(
            np.arange(len(kinds)) + i * width,
            [100 * m for m, _ in stats],
            width,
            yerr=[100 * s for _, s in stats],
            capsize=3,
            label=results.name(label),
        )
    axes[0].set_xticks(np.arange(len(kinds)) + width * (len(labels) - 1) / 2, [k for _, k in kinds])
    axes[0].set_ylabel("test ECE (%)")
    axes[0].set_title("(a) ECE, raw and after post-hoc calibration")
    axes[0].legend(fontsize=8)
    for ax, key, title in (
        (axes[1], "test/ece", "(b) ECE during training"),
        (axes[2], "test/tce", "(c) TCE during training"),
    ):
        for label in labels:
            runs = results.metrics[results.best_csam if label == BEST_CSAM else label]
            steps, mean, std = _mean_curve(runs, key)
            if len(steps):
                ax.plot(steps, 100 * mean, marker="o", markersize=3, label=results.name(label))
                ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_ylabel("test " + key.split("/")[1].upper() + " (%)")
        ax.set_title(title)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "figure3.png"), dpi=120)
    plt.close(fig)


def _reliability(results: Results, num_bins: int, out: str) -> None:
    labels = _trio(results)
    if not labels:
        return
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 4), squeeze=False)
    centers = (np.arange(num_bins) + 0.5) / num_bins
    for ax, label in zip(axes[0], labels):
        runs = results.runs(label)
        counts = np.sum([r["reliability"]["counts"] for r in runs], axis=0)
        correct = np.sum([np.multiply(r["reliability"]["accuracy"], r["reliability"]["counts"]) for r in runs], axis=0)
        confidence = np.sum(
            [np.multiply(r["reliability"]["confidence"], r["reliability"]["counts"]) for r in runs], axis=0
        )
        nonempty = counts > 0
        accuracy = np.where(nonempty, correct / np.maximum(counts, 1), 0)
        mean_conf = np.where(nonempty, confidence / np.maximum(counts, 1), 0)
        ax.bar(centers, accuracy, width=1 / num_bins, edgecolor="black", label="accuracy")
        ax.bar(centers, mean_conf - accuracy, bottom=accuracy, width=1 / num_bins, color="red", alpha=0.3, label="gap")
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ece_mean, ece_std = results.stat(label, ("test", "ece"))
        ax.set_title(
            f"{results.name(label)}\nECE {100 * ece_mean:.2f} ± {100 * ece_std:.2f} % ({len(runs)} seeds pooled)"
        )
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "reliability.png"), dpi=120)
    plt.close(fig)


def _figure2(results: Results, out: str) -> None:
    runs = results.metrics.get("sam_geometry")
    if not runs:
        return
    records = [r for r in runs[0] if any(k.startswith(GEOMETRY_PREFIX) for k in r)]
    if not records:
        return
    path_keys = sorted(
        (k for k in records[0] if k.startswith(GEOMETRY_PREFIX + "kappa_min_t")),
        key=lambda k: float(k.rsplit("_t", 1)[1]),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for key, label in ((path_keys[0], "theta"), (path_keys[-1], "theta~ (SAM point)")):
        steps, values = _curve(records, key)
        axes[0].plot(steps, values, marker="o", markersize=3, label=f"kappa_min at {label}")
    steps, bound = _curve(records, GEOMETRY_PREFIX + "kappa_min_bound")
    axes[0].plot(steps, bound, "k--", label="-||g|| / rho")
    axes[0].set_title("(a) kappa_min at theta and theta~")
    axes[0].set_xlabel("step")
    axes[0].legend(fontsize=8)
    ts = [float(k.rsplit("_t", 1)[1]) for k in path_keys]
    picks = sorted({0, len(records) // 2, len(records) - 1})
    for i in picks:
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
        steps, values = _curve(records, GEOMETRY_PREFIX + key)
        axes[2].plot(steps, values, marker="o", markersize=3, label=label)
    axes[2].set_title("(c) lambda and its bound lambda_0 (eq. 2)")
    axes[2].set_xlabel("step")
    axes[2].set_yscale("log")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "figure2.png"), dpi=120)
    plt.close(fig)


def _figure_s6(results: Results, out: str) -> None:
    points = [
        (gamma, label) for (rho, gamma), label in sorted(RHO_GAMMA.items()) if rho == 0.05 and results.runs(label)
    ]
    if len(points) < 2:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, title in ((axes[0], "accuracy", "test accuracy (%)"), (axes[1], "ece", "test ECE (%)")):
        stats = [results.stat(label, ("test", key)) for _, label in points]
        ax.errorbar(
            [g for g, _ in points], [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o", capsize=3
        )
        ax.set_xlabel("gamma (0 = SAM)")
        ax.set_title(title)
    fig.suptitle("Figure S6: CSAM's gamma at rho 0.05")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "figure_s6.png"), dpi=120)
    plt.close(fig)


def main(config: ml_collections.ConfigDict, mode: str = "all", shard: str = "0/1") -> None:
    """Runs one shard of the grid, writes the report, exports the compact copy, or runs then reports.

    Args:
      config: a preset of ``experiments/configs/calibration_benchmark.py``.
      mode: one of ``MODES``.
      shard: ``"i/n"``: this process trains jobs ``i, i + n, ...`` of each stage.
    """
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}.")
    selected_groups(config)
    if mode in ("run", "all"):
        run_shard(config, *parse_shard(shard))
    if mode == "export":
        print(f"Compact copy: {export(config)}")
    if mode in ("report", "all"):
        out = report(config)
        with open(os.path.join(out, "report.md")) as f:
            print(f.read())
        print(f"Report: {out}")


if __name__ == "__main__":
    cli.run_grid(
        main,
        os.path.join(os.path.dirname(__file__), "configs", "calibration_benchmark.py:quick"),
        MODES,
        "Train and evaluate a shard, write the report, export the compact copy, or run then report.",
    )
