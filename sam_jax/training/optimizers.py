"""Builds the learning-rate schedule and the optax transformation a config names.

Weight decay is placed in the base chain (``optax.add_decayed_weights`` before SGD, the decoupled
``optax.adamw`` for AdamW), never inside the loss: SAM-family ascent steps therefore see the loss
gradient only (see ``docs/optimizers.md``).
"""
import ml_collections
import optax

from sam_jax import optim
from sam_jax.training.config import SAM_FAMILY


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """``optimizer.schedule`` over ``total_steps``, after ``optimizer.warmup_steps`` of linear warm-up."""
    opt = config.optimizer
    warmup = min(opt.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if opt.schedule == "constant":
        main = optax.constant_schedule(opt.learning_rate)
    elif opt.schedule == "cosine":
        main = optax.cosine_decay_schedule(opt.learning_rate, decay_steps)
    else:
        boundaries = {int(b * decay_steps): opt.step_factor for b in opt.step_boundaries}
        main = optax.piecewise_constant_schedule(opt.learning_rate, boundaries)
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup), main], [warmup])


def _sgd(learning_rate: optax.ScalarOrSchedule, momentum: float, nesterov: bool,
         weight_decay: float) -> optax.GradientTransformation:
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov and momentum > 0),
    )


def _base(config: ml_collections.ConfigDict, name: str,
          schedule: optax.Schedule) -> optax.GradientTransformation:
    opt = config.optimizer
    if name == "sgd":
        return _sgd(schedule, opt.momentum, opt.nesterov, opt.weight_decay)
    if name == "gd":
        return _sgd(schedule, 0.0, False, opt.weight_decay)
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(opt.weight_decay),
                           optax.adam(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps))
    if name == "adamw":
        return optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay)
    if name == "muon":
        return optax.contrib.muon(schedule, weight_decay=opt.weight_decay, adam_b1=opt.b1, adam_b2=opt.b2)
    raise ValueError(f"No base optimizer {name!r}.")


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int,
                   num_train: int) -> optax.GradientTransformationExtraArgs:
    """The transformation for ``config.optimizer``; every one accepts the ``grad_fn`` extra argument.

    Args:
      config: the run config.
      total_steps: optimizer steps in the run (for the schedule).
      num_train: training examples N (bSAM's posterior scale).
    """
    opt = config.optimizer
    schedule = learning_rate_schedule(config, total_steps)
    if opt.name in SAM_FAMILY:
        base = _base(config, opt.base, schedule)
        factory = optim.m_sharpness_sam if opt.m else optim.sam
        tx = factory(base, opt.rho, adaptive=opt.name == "asam", eta=opt.eta if opt.name == "asam" else 0.0,
                     renormalize=opt.name == "ssam")
    elif opt.name == "bsam":
        tx = optim.bsam(schedule, opt.rho, num_train, beta1=opt.b1, beta2=opt.b2,
                        prior_precision=opt.prior_precision,
                        damping=opt.damping, init_precision=opt.init_precision, seed=config.seed)
    elif opt.name == "bulk_sgd":
        tx = optim.bulk_sgd(schedule, opt.bulk_k, num_iters=opt.bulk_num_iters, momentum=opt.momentum)
    else:
        tx = _base(config, opt.name, schedule)
    return optax.with_extra_args_support(tx)
