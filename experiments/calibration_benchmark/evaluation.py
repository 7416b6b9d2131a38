"""The calibration benchmark's evaluation of a finished job, the Figure 2 tracking and a shard's run
(Tan et al. 2025, arXiv:2505.23866)."""

import collections
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.calibration_benchmark.jobs import (
    ENSEMBLE_FILE,
    EVAL_FILE,
    TUNED_FILE,
    method_jobs,
    selected_groups,
    tune_jobs,
    tuned_hparams,
)
from experiments.grid import Job, RunDataCache, data_key, run_jobs
from sam_jax import calibration, data
from sam_jax.losses import get_loss
from sam_jax.training import (
    Checkpointer,
    Hook,
    Run,
    TrainState,
    load_trained,
    make_predictive,
    optimizer_hparams,
    top_eigenvalue,
)
from sam_jax.training.config import chosen_hparams
from sam_jax.training.hooks import make_sam_geometry_tracker
from sam_jax.training.writers import to_python


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
    train = run.data.train
    return top_eigenvalue(run, state, train.images[:examples], train.labels[:examples], num_iters=num_iters)


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
    result["wall_time_s"] = job.summary().get("wall_time_s")
    with open(os.path.join(job.workdir, EVAL_FILE), "w") as f:
        json.dump(to_python(result), f, indent=2)
    return result


class Evaluator:
    """Evaluates finished jobs (as the grid's ``after_job`` and afterwards), caching the OOD sets."""

    def __init__(self, bench: ml_collections.ConfigDict, run_data: RunDataCache | None = None):
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
    return not job.summary().get("diverged")


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


def run_shard(
    config: ml_collections.ConfigDict, select: Callable[[Sequence[Job]], list[Job]], poll_s: float = 30.0
) -> None:
    """Trains and evaluates the jobs that ``select`` keeps (a shard): its tuning jobs, then (once the
    search is complete, waiting for the other shards' part) its method jobs."""
    groups = selected_groups(config)
    run_data = RunDataCache()
    evaluator = Evaluator(config.benchmark, run_data)
    cache_dir = os.path.join(config.workdir, "jax_cache")
    tuning = (
        tune_jobs(config) if "tune" in groups or not os.path.exists(os.path.join(config.workdir, TUNED_FILE)) else []
    )
    run_jobs(select(tuning), compilation_cache_dir=cache_dir, run_data=run_data)
    tuned = tuned_hparams(config)
    while tuned is None:
        time.sleep(poll_s)
        tuned = tuned_hparams(config)
    jobs = select(method_jobs(config, tuned, groups))
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
