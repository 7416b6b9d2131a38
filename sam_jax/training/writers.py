"""Run outputs: the resolved config, JSON-lines metrics and a final JSON summary."""

import contextlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def to_python(value: Any) -> Any:
    """Arrays and numpy scalars as JSON-ready Python numbers and lists (NaN/inf as strings)."""
    value = jax.device_get(value)
    if isinstance(value, Mapping):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return to_python(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends one JSON object per line to ``<workdir>/metrics.jsonl``; writes config and summary.

    Args:
      workdir: the run directory.
      active: whether this process writes; False on every process of a distributed run but
        process 0, so that each file has one writer (all processes compute the metrics, since
        they all take part in the computations behind them).
    """

    def __init__(self, workdir: str, active: bool = True):
        os.makedirs(workdir, exist_ok=True)
        self.workdir = workdir
        self.path = os.path.join(workdir, METRICS_FILE)
        self.active = active

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        if not self.active:
            return
        with open(os.path.join(self.workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    def reset(self, keep_up_to_step: int) -> None:
        """Drops records after ``keep_up_to_step`` (a resumed run rewrites them); 0 starts afresh."""
        if not self.active:
            return
        kept = (
            [r for r in read_metrics(self.workdir) if r.get("step", 0) <= keep_up_to_step]
            if keep_up_to_step > 0 and os.path.exists(self.path)
            else []
        )
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), **to_python(dict(metrics))}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        if not self.active:
            return
        with open(os.path.join(self.workdir, SUMMARY_FILE), "w") as f:
            json.dump(to_python(dict(summary)), f, indent=2)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All records of ``<workdir>/metrics.jsonl``, in order.

    A last line cut short (an append interrupted by SIGKILL or a full disk) is left out; a resumed
    run rewrites the file without it (:meth:`MetricsWriter.reset`).
    """
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        *complete, last = f.read().split("\n")
    records = [json.loads(line) for line in complete if line.strip()]
    with contextlib.suppress(ValueError):
        records.extend([json.loads(last)] if last.strip() else [])
    return records
