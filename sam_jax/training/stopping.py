"""When a run ends before its step cap: ``config.early_stop``, read from each step's metrics.

Three rules, each off by default, the first that fires ending the run:

- **target** (``metric``, ``at_least``): the first evaluation at which ``metric >= at_least``
  (e.g. train accuracy 0.99) ends the run, when ``horizon_factor`` is 0;
- **horizon** (``horizon_factor`` >= 1): instead the run goes on past that step ``s`` and ends at
  step ``ceil(horizon_factor * s)``; every hook reports on that last step;
- **floor** (``below_metric``, ``below``): the first evaluation at which ``below_metric < below``
  (e.g. train loss below 1e-3) ends the run.

"Through interpolation and past it" (Morosini et al. 2026, arXiv:2604.20614, Sec. 3.1: calibration
and sharpness "decrease again later in training" and converge once all training points are
classified correctly) is ``metric="train/accuracy", at_least=0.99, horizon_factor=3,
below_metric="train/loss", below=1e-3``: whichever of 3x the step that first reached 99 % and a
train loss below 1e-3 comes first, with ``num_steps`` as the cap.

The rule's state (the step that met the target) is rebuilt from ``metrics.jsonl`` on resume, so a
resumed run ends where an uninterrupted one would.
"""

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections


@dataclasses.dataclass
class EarlyStop:
    """The early-stopping rules of one run and the step at which its target was first met.

    Attributes:
      metric: the target's metrics.jsonl key ("" = no target).
      at_least: the target value.
      horizon_factor: 0 = end at the target; >= 1 = end at ``ceil(horizon_factor * target step)``.
      below_metric: the floor's metrics.jsonl key ("" = no floor).
      below: the floor value.
      target_step: the first step whose record met the target (``None`` before that).
    """

    metric: str = ""
    at_least: float = 0.0
    horizon_factor: float = 0.0
    below_metric: str = ""
    below: float = 0.0
    target_step: int | None = None

    @classmethod
    def from_config(cls, block: ml_collections.ConfigDict) -> "EarlyStop":
        """The rules of a validated ``config.early_stop`` block."""
        return cls(
            metric=block.metric,
            at_least=float(block.at_least),
            horizon_factor=float(block.horizon_factor),
            below_metric=block.below_metric,
            below=float(block.below),
        )

    @property
    def horizon_end(self) -> int | None:
        """The step the horizon ends the run at, once the target was met (else ``None``)."""
        if self.target_step is None or self.horizon_factor == 0:
            return None
        return math.ceil(self.horizon_factor * self.target_step)

    def update(self, step: int, record: Mapping[str, Any]) -> bool:
        """Takes step ``step``'s metrics; True when the run ends at this step."""
        if self.below_metric and self.below_metric in record and record[self.below_metric] < self.below:
            return True
        if self.metric and self.target_step is None and self.metric in record and record[self.metric] >= self.at_least:
            self.target_step = step
            if self.horizon_factor == 0:
                return True
        return self.horizon_end is not None and step >= self.horizon_end

    def replay(self, records: Iterable[Mapping[str, Any]]) -> bool:
        """Feeds a resumed run's records (oldest first); True if one of them ended the run."""
        return any(self.update(int(record["step"]), record) for record in records)


def validate_early_stop(block: ml_collections.ConfigDict) -> list[str]:
    """The problems of a ``config.early_stop`` block, as messages naming the field (empty if none)."""
    fields = {"metric", "at_least", "horizon_factor", "below_metric", "below"}
    if set(block.keys()) != fields:
        return [f"early_stop={block.to_dict()} must have exactly the fields {sorted(fields)}."]
    problems = []
    for field in ("metric", "below_metric"):
        value = block[field]
        if not isinstance(value, str):
            problems.append(f"early_stop.{field}={value!r} must be a string.")
        elif value and "/" not in value:
            problems.append(
                f"early_stop.{field}={value!r} is not an evaluation metric; use a metrics.jsonl key such as "
                "'train/accuracy', 'train/loss' or 'val/nll'."
            )
    if not (block.horizon_factor == 0 or block.horizon_factor >= 1):
        problems.append(
            f"early_stop.horizon_factor={block.horizon_factor!r} must be 0 (end at the target) or >= 1 "
            "(end at that multiple of the step that met it)."
        )
    if block.horizon_factor and not block.metric:
        problems.append("early_stop.horizon_factor is set but early_stop.metric is empty: it has no target to follow.")
    return problems
