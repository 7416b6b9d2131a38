"""The library defaults (LeNet-5, Fashion-MNIST, SGD); override any field on the command line."""

import ml_collections

from sam_jax.training import default_config


def get_config() -> ml_collections.ConfigDict:
    return default_config()
