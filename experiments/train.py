"""Trains any config with the shared loop and prints the final test metrics.

    python -m experiments.train --config=experiments/configs/default.py \
        --config.optimizer.name=sam --config.workdir=runs/sam
"""

import json
import os

import ml_collections

from experiments import cli
from sam_jax.training import train_and_evaluate


def main(config: ml_collections.ConfigDict) -> None:
    summary = train_and_evaluate(config)
    shown = {k: v for k, v in summary.items() if k.startswith("test/")}
    shown.update(total_steps=summary["total_steps"], wall_time_s=summary["wall_time_s"])
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    cli.run(main, os.path.join(os.path.dirname(__file__), "configs", "default.py"))
