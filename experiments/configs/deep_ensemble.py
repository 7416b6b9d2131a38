"""A deep ensemble (Lakshminarayanan et al. 2016, arXiv:1612.01474) as one experiment: K runs of one
config that differ only in their seed, evaluated by averaging their probabilities.

    python -m experiments.deep_ensemble --config=experiments/configs/deep_ensemble.py:quick

Presets: ``quick`` (smoke test: 3 members of a small MLP on digits), ``fmnist`` (5 members of
LeNet-5 with dropout on Fashion-MNIST, the size of Tan et al. 2025's Table 1 ensembles, with
MC-dropout of 5 passes on the first member beside it). Any run field can be overridden, e.g.
``--config.optimizer.name=sam`` for an ensemble of SAM runs.
"""

import ml_collections

from sam_jax.training import default_config

PRESETS = ("quick", "fmnist")


def get_config(preset: str = "fmnist") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    config = default_config()
    config.workdir = f"runs/deep_ensemble_{preset}"
    config.ensemble = ml_collections.ConfigDict()
    config.ensemble.size = 5  # members K (Tan et al. 2025, Table 1: ensembles of size 5)
    config.ensemble.first_seed = 0  # member i trains with seed first_seed + i
    config.ensemble.mc_dropout_samples = 0  # > 0: also evaluate MC-dropout of member 0 with that many passes
    config.ensemble.ood_dataset = ""  # e.g. "mnist" for Fashion-MNIST members
    if preset == "quick":
        config.data.name = "digits"
        config.data.val_size = 200
        config.model.name = "mlp"
        config.model.kwargs = ml_collections.ConfigDict({"widths": (32,), "activation": "relu", "dropout_rate": 0.1})
        config.optimizer.learning_rate = 0.1
        config.batch_size = 64
        config.num_steps = 40
        config.eval_every_steps = 40
        config.eval_at_start = False
        config.progress_bar = False
        config.ensemble.size = 3
        config.ensemble.mc_dropout_samples = 3
    else:
        config.model.kwargs = ml_collections.ConfigDict({"dropout_rate": 0.1})
        config.optimizer.sgd.weight_decay = 5e-4
        config.num_epochs = 10
        config.ensemble.mc_dropout_samples = 5
        config.ensemble.ood_dataset = "mnist"
    return config
