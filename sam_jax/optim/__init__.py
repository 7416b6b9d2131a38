"""Sharpness-aware optimizers as optax transformations.

- ``sam(base, rho, *, adaptive, eta, renormalize)``: SAM / ASAM / SSAM around any optax optimizer.
- ``m_sharpness_sam(...)`` and ``split_into_sub_batches(batch, m)``: one perturbation per sub-batch.
- ``bsam(learning_rate, rho, num_data, ...)`` and ``bsam_sample(params, state, key, num_data)``:
  Bayesian SAM and draws from its Gaussian posterior.
- ``bulk_sgd(learning_rate, k, ...)``: SGD with the top-k Hessian directions projected out.

Each SAM-family ``update(grads, state, params, grad_fn=...)`` performs one whole step.
"""
from sam_jax.optim.bsam import BSAMState, bsam, bsam_sample
from sam_jax.optim.bulk_sgd import bulk_sgd
from sam_jax.optim.m_sharpness import m_sharpness_sam, split_into_sub_batches
from sam_jax.optim.sam import SAMState, ascent_perturbation, match_norm, sam

__all__ = [
    "BSAMState",
    "SAMState",
    "ascent_perturbation",
    "bsam",
    "bsam_sample",
    "bulk_sgd",
    "m_sharpness_sam",
    "match_norm",
    "sam",
    "split_into_sub_batches",
]
