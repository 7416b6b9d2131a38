"""Möllenhoff & Khan (2022, arXiv:2210.01620), Fig. 3, Fig. 5(c) and App. G.1: the 2-D toy posterior.

    python -m experiments.bsam_toy_posterior                                              # default
    python -m experiments.bsam_toy_posterior --config=experiments/configs/bsam_toy_posterior.py:quick

Bayesian logistic regression ``p(y = 1 | x, w) = sigmoid(w^T x)`` with two weights and no bias, on
linearly separable 2-D data whose separating line passes through the origin (the setting of
Murphy 2012, Ch. 8.4, that App. G.1 adopts), and a Gaussian prior ``N(0, I / prior_precision)``.
The paper gives neither the data nor the hyper-parameters of its toy; every value here is ours.

Presets: ``default`` (the committed figure and numbers) and ``quick`` (coarse grids, few steps; the
test).
"""

import ml_collections

PRESETS = ("default", "quick")


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
    config = ml_collections.ConfigDict()
    config.workdir = f"runs/bsam_toy_posterior_{preset}"
    config.seed = 0
    # Data: num_points inputs from N(0, input_scale^2 I), labelled by the side of the line through
    # the origin normal to (cos angle, sin angle); points within `margin` of the line are redrawn.
    config.data = ml_collections.ConfigDict(
        {"num_points": 30, "input_scale": 2.0, "angle_degrees": 30.0, "margin": 0.3}
    )
    # N * delta of the prior N(0, I / (N delta)) (bSAM's prior_precision): Murphy's variance 100.
    config.prior_precision = 0.01
    # The exact posterior and every Gaussian are integrated on a weight grid; predictive maps and
    # their differences are on an input grid.
    config.weight_grid = ml_collections.ConfigDict({"low": -10.0, "high": 45.0, "points": 551})
    config.input_grid = ml_collections.ConfigDict({"low": -6.0, "high": 6.0, "points": 81})
    # SAM (Foret et al. 2020, eq. 2) on the full batch, gradient descent with momentum as its base,
    # the loss with the prior's L2 term; Laplace at its solution.
    config.sam = ml_collections.ConfigDict({"rho": 0.05, "learning_rate": 0.5, "momentum": 0.9, "steps": 3000})
    # bSAM (Algorithm 1) on the full batch: N = num_points, its prior_precision above; one run per
    # damping: Algorithm 1's 0.1, and none (with N = 30 examples, N gamma = 3 dominates the precision).
    config.bsam = ml_collections.ConfigDict(
        {
            "rho": 0.05,
            "learning_rate": 0.1,
            "beta1": 0.9,
            "beta2": 0.999,
            "dampings": (0.1, 0.0),
            "steps": 20000,
        }
    )
    if preset == "quick":
        config.weight_grid.points = 111
        config.input_grid.points = 31
        config.sam.steps = 300
        config.bsam.steps = 500
    return config
