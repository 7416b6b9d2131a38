"""Stable SAM's learning-rate regime (Tan et al. 2024, arXiv:2401.07250): the grid presets.

    python -m experiments.ssam_regime --config=experiments/configs/ssam_regime.py:quick

One protocol for SGD, SAM and SSAM: the same SGD base (heavy-ball momentum 0.9, L2 weight decay
5e-4 in the gradient, cosine decay of the learning rate to 0, batch 128), the same radius ``rho``
for SAM and SSAM, every learning rate of a log grid (half a decade apart, from 1e-3 to 3.16: wide
enough that the largest rates diverge), three seeds. Presets:

- ``quick``: the smoke test of the suite (a tiny MLP, a few steps on a Fashion-MNIST subset, one
  small rate for every method and one that diverges for SGD, two seeds);
- ``fmnist``: Fashion-MNIST (55,000 train / 5,000 validation) with LeNet-5, 20 epochs;
- ``cifar10_jpeg``: CIFAR-10 (JPEG q75) (45,000 / 5,000) with random crops (4-pixel padding) and
  flips, 20 epochs, run with the archive's folder as data root
  (``--config.data.data_dir=../shared/data`` or ``$SAM_JAX_DATA_DIR``). Its model, LeNet-5, is the
  CPU-sized model of the calibration benchmark's ``cifar10_cpu`` preset; that preset trains without
  augmentation for 30 epochs so that SGD becomes overconfident (its premise), which this sweep
  does not need, so the sweep keeps crop + flip and 20 epochs.

``regime`` holds what the driver adds to the runs (not part of a run's config): the reference
method of the comparison and the descent/ascent gradient-norm tracking of the SAM-family runs.
"""

import ml_collections

from sam_jax.training import default_config

PRESETS = ("quick", "fmnist", "cifar10_jpeg")

# 10 ** (k / 2) for k = -6, ..., 1: half a decade apart.
LEARNING_RATES = (0.001, 0.003162, 0.01, 0.03162, 0.1, 0.3162, 1.0, 3.162)
RHO = 0.05  # the same for SAM and SSAM (the authors' usage example: SGD lr 0.05, rho 0.05)
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
SEEDS = (0, 1, 2)
EPOCHS = 20
TRAIN_SIZES = {"fashion_mnist": 55_000, "cifar10_jpeg": 45_000}


def _grid(learning_rates: tuple[float, ...], rho: float, seeds: tuple[int, ...]) -> ml_collections.ConfigDict:
    grid = ml_collections.ConfigDict()
    grid.seeds = seeds
    sharpness_aware = {name: {"rho": rho, "base": "sgd"} for name in ("sam", "ssam")}
    grid.optimizers = ml_collections.ConfigDict(
        {
            "sgd": {"learning_rates": learning_rates},
            **{
                name: {"learning_rates": learning_rates, "overrides": {"optimizer": {name: block}}}
                for name, block in sharpness_aware.items()
            },
        }
    )
    return grid


def _regime(batches: int, every: int) -> ml_collections.ConfigDict:
    regime = ml_collections.ConfigDict()
    # (method, reference) grid labels: the report lists where the method beats the reference.
    regime.comparisons = (("sam", "sgd"), ("ssam", "sgd"), ("ssam", "sam"))
    # Descent/ascent gradient-norm ratio of the runs with a radius: every `ratio_every` steps (and at
    # steps 0 and the last), on `ratio_batches` fixed batches of the run's batch size from the train set.
    regime.ratio_every = every
    regime.ratio_batches = batches
    regime.ratio_seed = 0  # seeds the choice of those examples
    return regime


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    """Returns the grid config of ``preset`` (one of ``PRESETS``)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r} for ssam_regime; use one of {PRESETS}.")
    config = default_config()
    config.workdir = f"runs/ssam_regime_{preset}"
    config.data.name = "cifar10_jpeg" if preset == "cifar10_jpeg" else "fashion_mnist"
    config.data.val_size = 5000
    config.model.name = "lenet5"
    config.loss.name = "cross_entropy"
    config.optimizer.schedule = "cosine"
    config.optimizer.sgd.momentum = MOMENTUM
    config.optimizer.sgd.weight_decay = WEIGHT_DECAY
    config.batch_size = 128
    config.num_epochs = EPOCHS
    config.eval_train_size = 5000
    config.checkpoint_every_steps = 1000
    config.progress_bar = False  # the grid runner shows one bar over jobs
    config.grid = _grid(LEARNING_RATES, RHO, SEEDS)
    if preset == "quick":
        config.data.train_size = 256
        config.data.val_size = 128
        config.data.test_size = 200
        config.model.name = "mlp"
        config.model.kwargs = ml_collections.ConfigDict({"widths": (16,), "activation": "relu"})
        config.batch_size = 64
        config.num_steps = 4
        config.eval_every_steps = 2
        config.eval_train_size = 256
        config.log_every_steps = 2
        config.grid = _grid((0.05,), RHO, (0, 1))
        # SGD also at 1e10, which overflows float32 within the first steps: the report's paths for a
        # diverged run and for a rate the other methods did not run.
        config.grid.optimizers.sgd.learning_rates = (0.05, 1e10)
        config.regime = _regime(batches=2, every=2)
        return config
    steps_per_epoch = TRAIN_SIZES[config.data.name] // config.batch_size
    config.eval_every_steps = 2 * steps_per_epoch
    config.regime = _regime(batches=4, every=steps_per_epoch // 2)
    if preset == "cifar10_jpeg":
        config.data.augment.crop_padding = 4
        config.data.augment.flip = True
    return config
