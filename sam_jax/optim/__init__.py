"""Sharpness-aware optimizers as optax transformations.

- ``sam(base, rho, *, adaptive, eta, renormalize)``: SAM / ASAM / SSAM around any optax optimizer.
- ``m_sharpness_sam(...)`` and ``split_into_sub_batches(batch, m)``: one perturbation per sub-batch.
- ``device_vmap(fn, mesh, in_axes)``: ``jax.vmap`` whose entries are split over the devices (each
  device evaluates the sub-batches it holds); ``unrolled_map(fn, in_axes)``: ``jax.vmap`` written
  out entry by entry (faster for convolutions at per-entry weights on XLA:CPU);
  ``per_device_sam_gradient(loss_fn, params, batch, rho, mesh)``: SAM with one perturbation per
  device shard, as Foret et al.'s ``pmap`` code; ``PER_DEVICE`` (-1) is the SAM-family ``m`` that
  asks the train step for it; ``DATA_AXIS`` is the mesh axis the batch is split over.
- ``scale_by_bsam(rho, num_data, *, prior_precision, ...)``: Bayesian SAM's direction ``gm / s``,
  to chain with ``optax.scale_by_learning_rate``; ``bsam(learning_rate, rho, num_data, ...)`` is that
  chain; ``bsam_sample(params, state, key, num_data)`` draws from its Gaussian posterior.
- ``project_out_top_hessian_directions(k, ...)``: the top-k Hessian directions removed from the
  updates, to chain before any optax optimizer; ``bulk_sgd(learning_rate, k, ...)`` is the chain
  with SGD.
- ``scale_by_vogn(num_data, batch_size, *, prior_precision, ...)``: VOGN's direction ``m / p`` from
  per-example gradients; ``vogn(learning_rate, num_data, batch_size, ...)`` is it with the learning
  rate; ``vogn_sample(params, state, key, num_data)`` draws from its Gaussian posterior.
- ``swag(base, *, start_step, collect_every, rank)``: SWAG's moments and deviation matrix collected
  along ``base``'s trajectory; ``swag_sample(params, state, key, num_data)`` draws from its
  diagonal-plus-low-rank Gaussian.
- ``vasso(base, rho, *, theta)``: VaSSO, SAM with a moving average of the gradients as ascent direction.
- ``gsam(base, rho, *, alpha)``: GSAM, SAM's perturbed gradient minus ``alpha`` times the clean
  gradient's part orthogonal to it; ``gsam_rho_schedule(learning_rate, rho_max, rho_min, ...)`` ties
  its radius to the learning rate.
- ``looksam(base, rho, *, k, alpha)``: LookSAM, the SAM gradient every ``k`` steps and the clean
  gradient plus the stored orthogonal part in between (one gradient pass).
- ``ivon(learning_rate, ess, ...)``: IVON, the improved variational online Newton step
  (``scale_by_ivon`` chained with the learning rate); ``ivon_sample(params, state, key)`` draws from
  its Gaussian posterior.
- ``bayes_by_backprop(base, num_data, *, prior_precision, init_std)``: mean-field Gaussian VI around any
  optax optimizer; ``mean_field_vi(learning_rate, num_data, ...)`` is it with Adam;
  ``mean_field_vi_sample(params, state, key, num_data)`` draws from its posterior;
  ``kl_divergence_mean_field(mu, sigma, prior_precision)`` is its KL term.

Each SAM-family ``update(grads, state, params, grad_fn=...)`` performs one whole step.

``OPTIMIZERS`` (``sam_jax.optim.registry``) registers every optimizer by config name with its
hyper-parameters and what the train step must give it; ``build_optimizer(name, context)`` builds it.
"""

from sam_jax.optim.bsam import BSAMState, bsam, bsam_sample, scale_by_bsam
from sam_jax.optim.bulk_sgd import HessianProjectionState, bulk_sgd, project_out_top_hessian_directions
from sam_jax.optim.device_sharpness import DATA_AXIS, PER_DEVICE, device_vmap, per_device_sam_gradient, unrolled_map
from sam_jax.optim.gsam import gsam, gsam_rho_schedule
from sam_jax.optim.ivon import IVONState, ivon, ivon_sample, scale_by_ivon
from sam_jax.optim.looksam import LookSAMState, looksam
from sam_jax.optim.m_sharpness import m_sharpness_sam, split_into_sub_batches
from sam_jax.optim.registry import (
    DEFAULT_OPTIMIZER,
    OPTIMIZERS,
    BuildContext,
    OptimizerSpec,
    blocks_read,
    build_optimizer,
    get_optimizer_spec,
    hparam_blocks,
    register,
    validate_hparams,
)
from sam_jax.optim.sam import SAMState, ascent_perturbation, global_norm, match_norm, orthogonal_component, sam
from sam_jax.optim.swag import SWAGState, swag, swag_sample
from sam_jax.optim.variational import (
    MeanFieldVIState,
    bayes_by_backprop,
    kl_divergence_mean_field,
    mean_field_vi,
    mean_field_vi_sample,
)
from sam_jax.optim.vasso import VASSOState, vasso
from sam_jax.optim.vogn import VOGNState, scale_by_vogn, vogn, vogn_sample

__all__ = [
    "BSAMState",
    "BuildContext",
    "DATA_AXIS",
    "DEFAULT_OPTIMIZER",
    "OPTIMIZERS",
    "OptimizerSpec",
    "PER_DEVICE",
    "blocks_read",
    "build_optimizer",
    "get_optimizer_spec",
    "hparam_blocks",
    "register",
    "validate_hparams",
    "HessianProjectionState",
    "MeanFieldVIState",
    "SAMState",
    "SWAGState",
    "VASSOState",
    "VOGNState",
    "ascent_perturbation",
    "bayes_by_backprop",
    "bsam",
    "bsam_sample",
    "bulk_sgd",
    "device_vmap",
    "global_norm",
    "kl_divergence_mean_field",
    "m_sharpness_sam",
    "match_norm",
    "mean_field_vi",
    "mean_field_vi_sample",
    "per_device_sam_gradient",
    "project_out_top_hessian_directions",
    "sam",
    "scale_by_bsam",
    "split_into_sub_batches",
    "unrolled_map",
    "vasso",
    "IVONState",
    "LookSAMState",
    "gsam",
    "gsam_rho_schedule",
    "ivon",
    "ivon_sample",
    "looksam",
    "orthogonal_component",
    "scale_by_ivon",
    "swag",
    "swag_sample",
    "scale_by_vogn",
    "vogn",
    "vogn_sample",
]
