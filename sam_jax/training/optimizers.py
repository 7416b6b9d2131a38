"""Builds the learning-rate schedule of a config and the optimizer its ``optimizer`` block names.

Weight decay belongs to each optimizer's block (``optax.add_decayed_weights`` before SGD, the
decoupled ``optax.adamw`` for AdamW), never to the loss: SAM-family ascent steps therefore see the
loss gradient only (see ``docs/optimizers.md``).
"""

import ml_collections
import optax

from sam_jax import optim
from sam_jax.training.config import optimizer_hparams, run_batch_size


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """``optimizer.schedule`` over ``total_steps``, after ``optimizer.warmup_steps`` of linear warm-up.

    With ``optimizer.decay_steps`` > 0 the schedule ends at that step instead (the cosine reaches 0
    there, the step boundaries are fractions of it) and keeps its final value afterwards; an
    optimizer with a phase of its own after it (SWAG's collection) sets its own rate there.
    """
    opt = config.optimizer
    horizon = min(opt.decay_steps, total_steps) if opt.decay_steps else total_steps
    warmup = min(opt.warmup_steps, horizon)
    decay_steps = max(horizon - warmup, 1)
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


def make_optimizer(
    config: ml_collections.ConfigDict, total_steps: int, num_train: int
) -> optax.GradientTransformationExtraArgs:
    """The transformation ``sam_jax.optim.OPTIMIZERS`` builds for ``config.optimizer``.

    Every one accepts the ``grad_fn`` extra argument of the train step.

    Args:
      config: the run config.
      total_steps: optimizer steps in the run (for the schedule).
      num_train: training examples N (bSAM's posterior scale).
    """
    opt = config.optimizer
    blocks = optimizer_hparams(config)
    context = optim.BuildContext(
        learning_rate=learning_rate_schedule(config, total_steps),
        num_train=num_train,
        seed=config.seed,
        blocks=blocks,
        batch_size=run_batch_size(config, num_train),
        total_steps=total_steps,
    )
    return optim.build_optimizer(opt.name, context)
