"""Trains any config with the shared loop and prints the final test metrics.

    python -m experiments.train --config=experiments/configs/default.py \
        --config.optimizer.name=sam --config.workdir=runs/sam
"""
import json
import os

from absl import app
from ml_collections import config_flags

from sam_jax.training import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "default.py"), "Run config.",
    lock_config=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    summary = train_and_evaluate(_CONFIG.value)
    shown = {k: v for k, v in summary.items() if k.startswith("test/")}
    shown.update(total_steps=summary["total_steps"], wall_time_s=summary["wall_time_s"])
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    app.run(main)
