"""A run long enough to be killed mid-way (tests/test_training.py: SIGKILL + resume)."""

import ml_collections

from sam_jax.training import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "digits"
    config.data.val_size = 200
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict({"widths": (64, 64), "activation": "tanh"})
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.05
    config.batch_size = 32
    config.num_steps = 1500
    config.eval_every_steps = 750
    config.eval_batch_size = 512
    config.log_every_steps = 100
    config.checkpoint_every_steps = 100
    config.progress_bar = False
    return config
