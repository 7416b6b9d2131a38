"""Quickstart: LeNet-5 (ReLU) on Fashion-MNIST with SGD + momentum, a few epochs on a CPU.

python -m experiments.quickstart --config.optimizer.name=sam --config.num_epochs=3
"""

import ml_collections

from sam_jax.training import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.workdir = "runs/quickstart"
    config.data.name = "fashion_mnist"
    config.model.name = "lenet5"
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.optimizer.sgd.momentum = 0.9  # also SAM's base (sam.base = "sgd")
    config.optimizer.sgd.weight_decay = 5e-4
    config.batch_size = 128
    config.num_epochs = 8
    return config
