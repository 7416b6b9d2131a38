"""A short CLI run for the exit-code stress test (benchmarks/stress_exit.py, tests/test_reliability.py)."""

import ml_collections

from sam_jax.training import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name = "digits"
    config.data.val_size = 200
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict({"widths": (32,), "activation": "tanh"})
    config.optimizer.learning_rate = 0.1
    config.batch_size = 32
    config.num_steps = 120
    config.eval_at_start = False
    config.eval_every_steps = 120
    config.eval_batch_size = 512
    config.log_every_steps = 40
    config.checkpoint_every_steps = 40
    config.progress_bar = False
    config.overwrite = True
    return config
