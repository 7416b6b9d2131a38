"""Saddle escape of GD / SGD, SAM and SSAM (Tan et al. 2024, arXiv:2401.07250): the presets.

    python -m experiments.ssam_saddle --config=experiments/configs/ssam_saddle.py:full

Presets: ``quick`` (smoke test: the quartic saddle, two learning rates, one radius, two seeds, 60
steps), ``full`` (the committed run, no momentum) and ``full_momentum`` (the same with heavy-ball
momentum 0.9, as in the learning-rate sweep, and learning rates ten times smaller: the same
step size ``lr / (1 - momentum)`` once the momentum has built up). Both problems of
``sam_jax.analysis.saddle`` start at ``init_scale`` times standard normal entries around their
saddle at 0 (one draw per seed, the same for every optimizer, learning rate and radius).
``methods`` are registered optimizer names, each with the SGD base of ``momentum`` and no weight
decay: ``sgd`` is gradient descent without noise and SGD with it.
``noise_stds`` are the standard deviations of the Gaussian gradient noise (0: deterministic). A run
has escaped once its loss is ``escape_fraction`` of the way from the saddle's value to the
minimum's (``sam_jax.analysis.saddle.escape_threshold``).
"""

import ml_collections

PRESETS = ("quick", "full", "full_momentum")


def get_config(preset: str = "quick") -> ml_collections.ConfigDict:
    """Returns the config of ``preset`` (one of ``PRESETS``)."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r} for ssam_saddle; use one of {PRESETS}.")
    config = ml_collections.ConfigDict()
    config.workdir = f"runs/ssam_saddle_{preset}"
    config.problems = ("quartic_saddle", "linear_network")
    # linear_network: A = diag(linear_singular_values), linear_hidden hidden units.
    config.linear_singular_values = (2.0, 1.0, 0.5)
    config.linear_hidden = 3
    config.methods = ("sgd", "sam", "ssam")
    config.momentum = 0.0
    config.learning_rates = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
    config.rhos = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    config.noise_stds = (0.0, 0.01)
    config.seeds = tuple(range(10))
    config.init_scale = 0.01
    config.num_steps = 4000
    config.escape_fraction = 0.5
    # The trajectories drawn: this learning rate, radius and seed, each noise level.
    config.show = ml_collections.ConfigDict({"learning_rate": 0.1, "rho": 0.03, "seed": 0})
    if preset == "full_momentum":
        config.momentum = 0.9
        config.learning_rates = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
        config.show.learning_rate = 0.01
    if preset == "quick":
        config.problems = ("quartic_saddle",)
        config.learning_rates = (0.05, 0.2)
        config.rhos = (0.1,)
        config.seeds = (0, 1)
        config.num_steps = 60
        config.show.learning_rate = 0.2
        config.show.rho = 0.1
    return config
