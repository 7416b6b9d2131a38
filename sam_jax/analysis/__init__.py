"""Reports over finished runs: metric trajectories, their correlations and trajectory figures."""

from sam_jax.analysis.figures import plot_confidence_gap, plot_dynamics, plot_ece_vs_sharpness, plot_figure1
from sam_jax.analysis.trajectories import (
    mean_std_over_learning_rates,
    overconfidence,
    pearson,
    seed_mean,
    trajectory,
    trajectory_correlation,
)

__all__ = [
    "mean_std_over_learning_rates",
    "overconfidence",
    "pearson",
    "plot_confidence_gap",
    "plot_dynamics",
    "plot_ece_vs_sharpness",
    "plot_figure1",
    "seed_mean",
    "trajectory",
    "trajectory_correlation",
]
