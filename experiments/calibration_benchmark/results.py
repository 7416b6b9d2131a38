"""The evaluations of a calibration benchmark grid by method, with the CSAM chosen on validation
(Tan et al. 2025, arXiv:2505.23866)."""

import collections
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from experiments.calibration_benchmark.jobs import ENSEMBLE_FILE, EVAL_FILE
from experiments.configs.calibration_benchmark import NAMES
from experiments.grid import Job
from experiments.tables import mean_std
from sam_jax.training import read_metrics

CSAM_GAMMAS = {"csam_g05": 0.5, "csam_g10": 1.0, "csam_g20": 2.0}
BEST_CSAM = "csam_best"


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

    def _choose_csam(self) -> str | None:
        """The CSAM gamma of Table 3 with the lowest mean validation ECE (the paper tunes gamma in
        {0.5, 1, 2}; we choose on validation, never on test)."""
        scored = [
            (mean_std([e["val"]["ece"] for e in self.evals[label]])[0], label)
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

        return mean_std([get(run) for run in self.runs(label)])


def present_labels(results: Results, labels: Sequence[str]) -> list[str]:
    """The ``labels`` that have evaluated runs."""
    return [label for label in labels if results.runs(label)]
