"""Evaluates saved runs: calibration suite, reliability diagram, OOD detection, corruptions.

    python -m experiments.evaluate --config.checkpoint=runs/quickstart --config.ood_dataset=mnist

Predictions go through ``sam_jax.training.make_predictive``: a deep ensemble
(``--config.ensemble=runs/b,runs/c``), MC-dropout (``--config.mc_dropout_samples=K``) or, for runs
whose optimizer learns a posterior (bSAM, mean-field VI), ``--config.posterior_samples`` samples from
it (Möllenhoff & Khan 2022, arXiv:2210.01620, Sec. 5: 32 samples); a multi-member model
(BatchEnsemble, MIMO, rank-1 BNN) averages its members in every case. Writes
``evaluation.json``, ``reliability_test.png`` and, when corruption files exist, ``corruptions.csv``
to ``<checkpoint>/evaluation`` (or ``--config.output_dir``).
"""

import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from experiments import cli
from experiments.tables import write_csv
from sam_jax import calibration, data
from sam_jax.training import Run, load_trained, make_predictive, predictive_kind
from sam_jax.training.hooks import reliability_diagram
from sam_jax.training.writers import to_python


def _metrics(
    probs: np.ndarray, labels: np.ndarray, val_probs: np.ndarray, val_labels: np.ndarray, num_bins: int
) -> dict[str, float]:
    """The calibration suite on predictive probabilities (log-probabilities act as logits)."""
    log_probs = np.log(np.maximum(probs, np.finfo(probs.dtype).tiny))
    val_log_probs = np.log(np.maximum(val_probs, np.finfo(val_probs.dtype).tiny))
    return calibration.calibration_metrics(
        log_probs, labels, val_logits=val_log_probs, val_labels=val_labels, num_bins=num_bins
    )


def _ood(
    predict: Callable[[data.ArrayDataset], np.ndarray],
    run: Run,
    test_probs: np.ndarray,
    config: ml_collections.ConfigDict,
) -> dict[str, float]:
    ood = data.load_dataset(config.ood_dataset, "test", data_dir=config.ood_data_dir or None)
    if ood.images.shape[1:] != run.data.test.images.shape[1:]:
        raise ValueError(
            f"OOD dataset {config.ood_dataset!r} has images of shape {ood.images.shape[1:]}, "
            f"the model takes {run.data.test.images.shape[1:]}."
        )
    ood_probs = predict(run.data.prepare(ood))
    return {
        "auroc_max_prob": float(
            calibration.auroc(
                calibration.max_probability_score(test_probs), calibration.max_probability_score(ood_probs)
            )
        ),
        "auroc_entropy": float(
            calibration.auroc(
                calibration.negative_entropy_score(test_probs), calibration.negative_entropy_score(ood_probs)
            )
        ),
        "num_ood": int(len(ood.labels)),
    }


def _corruptions(
    predict: Callable[[data.ArrayDataset], np.ndarray],
    run: Run,
    val_probs: np.ndarray,
    config: ml_collections.ConfigDict,
) -> list[dict[str, Any]]:
    """Metrics per CIFAR-10-C corruption and severity whose files are present."""
    rows = []
    for corruption in data.CIFAR10_CORRUPTIONS:
        for severity in range(1, 6):
            try:
                shifted = data.load_dataset(
                    "cifar10_corrupted",
                    f"{corruption}_{severity}",
                    data_dir=config.corruption_data_dir or None,
                    download=False,
                )
            except FileNotFoundError:
                break
            metrics = _metrics(
                predict(run.data.prepare(shifted)), shifted.labels, val_probs, run.data.val.labels, config.num_bins
            )
            rows.append(
                {
                    "corruption": corruption,
                    "severity": severity,
                    **{k: metrics[k] for k in ("accuracy", "nll", "ece", "tce", "brier")},
                }
            )
    return rows


def evaluate_checkpoint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Runs the whole evaluation of ``config.checkpoint`` and writes its files; returns the results."""
    if not config.checkpoint:
        raise ValueError("Set --config.checkpoint=<run directory> (a workdir of the train loop).")
    step = None if config.step < 0 else config.step
    run, state = load_trained(config.checkpoint, step)
    members = [(run, state)]
    for workdir in filter(None, (d.strip() for d in config.ensemble.split(","))):
        member_run, member_state = load_trained(workdir, run_data=run.data)
        if member_run.config.data.to_dict() != run.config.data.to_dict():
            raise ValueError(f"Ensemble member {workdir} was trained on other data than {config.checkpoint}.")
        members.append((member_run, member_state))
    output_dir = config.output_dir or os.path.join(config.checkpoint, "evaluation")
    os.makedirs(output_dir, exist_ok=True)

    predict = make_predictive(
        members,
        posterior_samples=config.posterior_samples,
        mc_dropout_samples=config.mc_dropout_samples,
        seed=config.seed,
        batch_size=config.batch_size,
    )
    val_probs, test_probs = predict(run.data.val), predict(run.data.test)
    results: dict[str, Any] = {
        "checkpoint": config.checkpoint,
        "step": int(state.step),
        "members": len(members),
        "predictive": predictive_kind(members, config.posterior_samples, config.mc_dropout_samples),
        "test": _metrics(test_probs, run.data.test.labels, val_probs, run.data.val.labels, config.num_bins),
    }
    reliability_diagram(
        test_probs, run.data.test.labels, config.num_bins, path=os.path.join(output_dir, "reliability_test.png")
    )
    if config.ood_dataset:
        results["ood"] = {"dataset": config.ood_dataset, **_ood(predict, run, test_probs, config)}
    if config.corruptions == "auto" and run.config.data.name == "cifar10":
        rows = _corruptions(predict, run, val_probs, config)
        results["corruptions"] = rows or "no CIFAR-10-C files found"
        write_csv(os.path.join(output_dir, "corruptions.csv"), rows)
    with open(os.path.join(output_dir, "evaluation.json"), "w") as f:
        json.dump(to_python(results), f, indent=2)
    return results


def main(config: ml_collections.ConfigDict) -> None:
    results = evaluate_checkpoint(config)
    test = results["test"]
    print(f"{results['checkpoint']} (step {results['step']}, {results['predictive']} predictive)")
    print(
        " | ".join(
            f"{k} {test[k]:.4f}" for k in ("accuracy", "nll", "ece", "adaptive_ece", "classwise_ece", "tce", "brier")
        )
    )
    if "ood" in results:
        ood = results["ood"]
        print(
            f"OOD vs {ood['dataset']}: AUROC max-prob {ood['auroc_max_prob']:.4f}, entropy {ood['auroc_entropy']:.4f}"
        )


if __name__ == "__main__":
    cli.run(main, os.path.join(os.path.dirname(__file__), "configs", "evaluate.py"))
