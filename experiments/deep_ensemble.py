"""Deep ensembles (Lakshminarayanan et al. 2016, arXiv:1612.01474) as one experiment.

    python -m experiments.deep_ensemble --config=experiments/configs/deep_ensemble.py:quick
    python -m experiments.deep_ensemble --config=...:fmnist --mode=run --shard=0/2   # and 1/2
    python -m experiments.deep_ensemble --config=...:fmnist --mode=evaluate

``run`` trains the members of one shard (member ``i`` is the run config with seed
``ensemble.first_seed + i`` in ``<workdir>/member<i>``; each resumable, finished ones skipped).
``evaluate`` averages the members' probabilities through ``sam_jax.training.make_predictive`` and
writes the calibration suite of the ensemble, of every member alone and, with
``ensemble.mc_dropout_samples``, of MC-dropout on member 0 to ``<workdir>/ensemble.json`` (plus the
ensemble's reliability diagram in ``<workdir>/evaluation``). ``all`` (default) does both.

It is not an ``experiments.runner.Experiment``: the runner's report is rebuilt from the compact run
records of a results store, while this evaluation needs every member's checkpoint (it averages their
predictions), so it keeps its own ``run`` / ``evaluate`` modes.
"""

import json
import os
from typing import Any

import ml_collections

from experiments import cli
from experiments.configs.evaluate import get_config as evaluation_config
from experiments.evaluate import evaluate_checkpoint
from experiments.grid import Job, parse_shard, run_jobs, shard_jobs
from sam_jax.training.writers import to_python

MODES = ("run", "evaluate", "all")
RESULT_FILE = "ensemble.json"


def member_jobs(config: ml_collections.ConfigDict) -> list[Job]:
    """One job per member: the run config (without ``ensemble``) with the member's seed and workdir."""
    if config.ensemble.size < 1:
        raise ValueError(f"ensemble.size={config.ensemble.size} must be >= 1.")
    jobs = []
    for i in range(config.ensemble.size):
        job = ml_collections.ConfigDict(config.to_dict())
        del job["ensemble"]
        job.seed = config.ensemble.first_seed + i
        job.workdir = os.path.join(config.workdir, f"member{i}")
        jobs.append(Job(f"member{i}", "member", job))
    return jobs


def _evaluation(config: ml_collections.ConfigDict, checkpoint: str, output_dir: str, **fields: Any) -> dict:
    settings = evaluation_config()
    settings.checkpoint, settings.output_dir = checkpoint, output_dir
    settings.num_bins, settings.seed, settings.ood_dataset = config.num_bins, config.seed, config.ensemble.ood_dataset
    for name, value in fields.items():
        settings[name] = value
    return evaluate_checkpoint(settings)


def evaluate_ensemble(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ensemble, each member and (optionally) MC-dropout of member 0; writes ``ensemble.json``.

    Raises:
      ValueError: a member has not finished training.
    """
    jobs = member_jobs(config)
    unfinished = [job.name for job in jobs if not job.done]
    if unfinished:
        raise ValueError(f"Members {unfinished} have not finished; run --mode=run first.")
    workdirs = [job.workdir for job in jobs]
    out = os.path.join(config.workdir, "evaluation")
    results: dict[str, Any] = {
        "size": len(jobs),
        "ensemble": _evaluation(config, workdirs[0], out, ensemble=",".join(workdirs[1:])),
        "members": [
            _evaluation(config, workdir, os.path.join(workdir, "evaluation"), posterior_samples=0)
            for workdir in workdirs
        ],
    }
    if config.ensemble.mc_dropout_samples:
        results["mc_dropout"] = _evaluation(
            config,
            workdirs[0],
            os.path.join(config.workdir, "mc_dropout"),
            mc_dropout_samples=config.ensemble.mc_dropout_samples,
            posterior_samples=0,
        )
    with open(os.path.join(config.workdir, RESULT_FILE), "w") as f:
        json.dump(to_python(results), f, indent=2)
    return results


def read_results(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The ``ensemble.json`` that :func:`evaluate_ensemble` wrote."""
    with open(os.path.join(config.workdir, RESULT_FILE)) as f:
        return json.load(f)


def main(config: ml_collections.ConfigDict, mode: str = "all", shard: str = "0/1") -> None:
    """Trains one shard of the members (``run``), evaluates the ensemble (``evaluate``), or both."""
    if mode not in MODES:
        raise ValueError(f"--mode={mode!r}; choose one of {MODES}.")
    if mode in ("run", "all"):
        index, count = parse_shard(shard)
        run_jobs(shard_jobs(member_jobs(config), index, count))
    if mode in ("evaluate", "all"):
        results = evaluate_ensemble(config)
        keys = ("accuracy", "nll", "ece", "tce")
        rows = [("ensemble", results["ensemble"])] + [(f"member{i}", r) for i, r in enumerate(results["members"])]
        if "mc_dropout" in results:
            rows.append(("mc_dropout(member0)", results["mc_dropout"]))
        for name, result in rows:
            print(f"{name:22s} " + " | ".join(f"{k} {result['test'].get(k, float('nan')):.4f}" for k in keys))


if __name__ == "__main__":
    cli.run_grid(
        main,
        os.path.join(os.path.dirname(__file__), "configs", "deep_ensemble.py:quick"),
        MODES,
        "Train members, evaluate the ensemble, or both.",
    )
