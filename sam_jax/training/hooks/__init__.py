"""What the train loop and the evaluation driver call besides the step: curvature tracking and figures.

- ``make_curvature_tracker(config, model_apply, loss_fn, *, batch_size, perturbation_rho)``: the
  loop's curvature hook over ``sam_jax.curvature``; ``default_curvature_config()`` and
  ``validate_curvature_config(config)`` describe and check its ``curvature`` config block.
- ``make_sam_geometry_tracker(model_apply, loss_fn, rho, *, path_points, num_iters, per_example)``:
  the measurements of Tan et al. (2025, arXiv:2505.23866) Figure 2: the smallest Hessian
  eigenvalue along the SAM step, and 1-SAM's entropy coefficients ``lambda`` and ``lambda_0``.
- ``make_descent_norm_tracker(model_apply, loss_fn, rho, *, batch_size)``: SAM's ratio of descent- to
  ascent-gradient norms on fixed mini-batches (what SSAM, Tan et al. 2024, arXiv:2401.07250, removes).
- ``plot_sharpness(records, path, *, learning_rate)`` and ``reliability_diagram(probs, labels, ...)``:
  the PNG figures of one run (matplotlib), written beside its metrics.

This package sits above ``sam_jax.optim``, ``sam_jax.curvature`` and ``sam_jax.calibration``, so
that those stay pure numerics (see docs/architecture.md).
"""

from sam_jax.training.hooks.curvature import (
    QUANTITIES,
    default_curvature_config,
    make_curvature_tracker,
    validate_curvature_config,
)
from sam_jax.training.hooks.descent_norm import make_descent_norm_tracker
from sam_jax.training.hooks.plots import plot_sharpness, reliability_diagram
from sam_jax.training.hooks.sam_geometry import make_sam_geometry_tracker

__all__ = [
    "QUANTITIES",
    "default_curvature_config",
    "make_curvature_tracker",
    "make_descent_norm_tracker",
    "make_sam_geometry_tracker",
    "plot_sharpness",
    "reliability_diagram",
    "validate_curvature_config",
]
