"""Trains LeNet-5 on Fashion-MNIST and prints test accuracy, NLL and ECE.

    python -m experiments.quickstart [--config=experiments/configs/quickstart.py] [--config.x=y ...]

Installs the Debian Fashion-MNIST package first when the data is missing and apt is available.
"""

import os

import ml_collections

from experiments import cli
from sam_jax.data import ensure_debian_fashion_mnist
from sam_jax.training import train_and_evaluate


def main(config: ml_collections.ConfigDict) -> None:
    if config.data.name == "fashion_mnist" and not config.data.data_dir:
        ensure_debian_fashion_mnist()
    summary = train_and_evaluate(config)
    data, model, opt = config.data, config.model, config.optimizer
    print(
        f"\nTrained {model.name} on {data.name} ({summary['num_train']} train, {summary['num_val']} "
        f"validation, {summary['num_test']} test examples) with {opt.name}, learning rate "
        f"{opt.learning_rate} ({opt.schedule}), batch {config.batch_size}, "
        f"{summary['total_steps']} steps."
    )
    print(f"Results: {os.path.abspath(config.workdir)} (summary.json, metrics.jsonl, config.json, checkpoints/)")
    print(
        f"test accuracy {summary['test/accuracy']:.4f} | test NLL {summary['test/nll']:.4f} | "
        f"test ECE {summary['test/ece']:.4f} (15 bins) | {summary['wall_time_s']:.0f} s"
    )


if __name__ == "__main__":
    cli.run(main, os.path.join(os.path.dirname(__file__), "configs", "quickstart.py"))
