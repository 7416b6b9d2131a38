"""Trains LeNet-5 on Fashion-MNIST and prints test accuracy, NLL and ECE.

    python -m experiments.quickstart [--config=experiments/configs/quickstart.py] [--config.x=y ...]

Installs the Debian Fashion-MNIST package first when the data is missing and apt is available.
"""
import os

from absl import app
from ml_collections import config_flags

from sam_jax.data import ensure_debian_fashion_mnist
from sam_jax.training import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "quickstart.py"), "Run config.",
    lock_config=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config.data.name == "fashion_mnist" and not config.data.data_dir:
        ensure_debian_fashion_mnist()
    summary = train_and_evaluate(config)
    print(f"\nRun directory: {config.workdir}")
    print(f"test accuracy {summary['test/accuracy']:.4f} | test NLL {summary['test/nll']:.4f} | "
          f"test ECE {summary['test/ece']:.4f} (15 bins) | {summary['wall_time_s']:.0f} s")


if __name__ == "__main__":
    app.run(main)
