"""Assembling a run from its config: data, model, optimizer, initial state and the jitted steps.

:func:`build_run` validates the config once, loads (or takes) the data, and returns a :class:`Run`
that the train loop, the evaluation and the experiments share; :func:`load_trained` rebuilds a saved
run and restores its checkpoint.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from sam_jax import data, optim
from sam_jax.losses import StatefulLoss, get_mixing, get_stateful_loss
from sam_jax.losses.validation import check_labels
from sam_jax.models import create_model
from sam_jax.training import sharding
from sam_jax.training.checkpoint import Checkpointer, all_finite
from sam_jax.training.config import (
    chosen_hparams,
    optimizer_hparams,
    run_batch_size,
    validate_config,
    validate_training_set_size,
    with_defaults,
)
from sam_jax.training.inputs import RunData, load_run_data
from sam_jax.training.optimizers import make_optimizer
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_eval_step, make_train_step
from sam_jax.training.writers import CONFIG_FILE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """What a run is made of; built by :func:`build_run`, reused by experiments and evaluation.

    Attributes:
      config: the validated run config.
      data: its train, validation and test splits.
      model: the Flax module.
      batch_size: examples per step (the training set for a full-batch optimizer).
      steps_per_epoch: batches per pass over the training set.
      total_steps: optimizer steps of the whole run.
      init_state: the state at step 0, replicated on every device.
      train_step: ``train_step(state, batch) -> (state, metrics)``, jitted.
      eval_step: ``eval_step(params, model_state, images) -> logits`` in inference mode, jitted.
      mesh: the data-parallel mesh.
      state_is_good: ``state_is_good(state, batch)``: finite state and finite loss on ``batch``.
      optimizer: the optimizer's registry spec.
      loss: the training loss (with its state).
      loss_at: ``loss_at(logits, labels, loss_state, mask=None)``, jitted.
      loss_epoch_update: the jitted ``loss.epoch_update``.
    """

    config: ml_collections.ConfigDict
    data: RunData
    model: nn.Module
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    init_state: TrainState
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    eval_step: Callable[[Any, Any, jax.Array], jax.Array]
    mesh: Mesh
    state_is_good: Callable[[TrainState, dict], jax.Array]
    optimizer: optim.OptimizerSpec
    loss: StatefulLoss
    loss_at: Callable[..., jax.Array]
    loss_epoch_update: Callable[..., Any]


# Runs of at least this many steps on CPU evaluate their sub-batches unrolled (``make_train_step``'s
# ``unroll_sub_batches``): seconds more to compile, repaid by tens of milliseconds a step for
# convolutional models; shorter runs (tests, smoke presets) keep ``jax.vmap``'s faster compilation.
UNROLL_MIN_STEPS = 1000


def unroll_sub_batches(total_steps: int) -> bool:
    """Whether a run of ``total_steps`` evaluates its sub-batches unrolled: on CPU, when it is long."""
    return jax.default_backend() == "cpu" and total_steps >= UNROLL_MIN_STEPS


def optimizer_step_options(
    spec: optim.OptimizerSpec,
    hparams: Mapping[str, Any],
    loss_name: str,
    loss_hparams: Mapping[str, Any],
    batch_size: int,
) -> dict[str, Any]:
    """What the train step needs from an optimizer's registry ``spec``: the keyword arguments
    ``descent_loss_fn``, ``m``, ``uses_clean_gradient`` and ``per_example_moments`` of
    ``make_train_step`` (``m`` is 0 when one sub-batch would hold the whole batch)."""
    m = spec.sub_batch_size(hparams)
    return {
        "descent_loss_fn": spec.descent_loss(hparams, loss_name, loss_hparams),
        "m": m if m < batch_size else 0,
        "uses_clean_gradient": spec.uses_clean_gradient,
        "per_example_moments": spec.per_example_moments,
    }


def _augment(config: ml_collections.ConfigDict) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
    """``augment(key, images)`` for the train step from ``config.data.augment``; None when all off."""
    settings = config.data.augment
    if not (settings.crop_padding or settings.flip or settings.cutout_size):
        return None
    return functools.partial(
        data.augment_batch,
        crop_padding=settings.crop_padding,
        flip=settings.flip,
        cutout_size=settings.cutout_size,
    )


def _initial_state(
    config: ml_collections.ConfigDict, model: nn.Module, tx: Any, loss: StatefulLoss, run_data: RunData, mesh: Mesh
) -> TrainState:
    """The state at step 0 from ``config.seed``, replicated on every device of ``mesh``."""
    num_train = len(run_data.train.labels)
    sample = np.asarray(run_data.train.images[:1])  # a constant of the traced init, not one process's array

    def init_variables(key: jax.Array) -> tuple[dict, jax.Array]:
        init_key, dropout_key, step_key = jax.random.split(key, 3)
        return dict(model.init({"params": init_key, "dropout": dropout_key}, sample, train=False)), step_key

    def init_state(variables: dict, step_key: jax.Array) -> TrainState:
        model_state = dict(variables)
        params = model_state.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=model_state,
            opt_state=tx.init(params),
            rng=step_key,
            loss_state=loss.init(num_train, run_data.num_classes),
        )

    # The state is replicated on every device (data parallelism), so every process can read it.
    replicated = sharding.replicated_sharding(mesh)
    # Two programs: the model's initialisation depends on the model and the data's shape only, so
    # runs that differ in their optimizer or loss share its (slow to compile) executable through
    # JAX's persistent compilation cache.
    variables, step_key = jax.jit(init_variables, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    return jax.jit(init_state, out_shardings=replicated)(variables, step_key)


def build_run(config: ml_collections.ConfigDict, run_data: RunData | None = None) -> Run:
    """Validates ``config``, loads its data (unless given) and builds the model, state and steps.

    The config is validated once, before anything is loaded; what needs the data (labels in range,
    finite images, a batch no larger than the training set, a validation split for a loss that
    updates its state on it) is checked once the data are there, before anything is compiled.
    """
    validate_config(config)
    run_data = run_data or load_run_data(config)
    check_run_data(run_data)
    num_train = len(run_data.train.labels)
    loss = get_stateful_loss(config.loss.name, **chosen_hparams(config.loss))
    if loss.epoch_split == "validation" and not len(run_data.val.labels):
        raise ValueError(
            f"Bad config: loss.name={config.loss.name!r} updates its state from the "
            "validation split; set data.val_size > 0."
        )
    validate_training_set_size(config, num_train)
    spec = optim.get_optimizer_spec(config.optimizer.name)
    hparams = optimizer_hparams(config)[config.optimizer.name]
    batch_size = run_batch_size(config, num_train)
    steps_per_epoch = data.num_batches(num_train, batch_size)
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch

    model = create_model(config.model.name, run_data.num_classes, **config.model.kwargs.to_dict())
    tx = make_optimizer(config, total_steps, num_train)
    mesh = sharding.data_mesh()
    sharding.batch_sharding(mesh, batch_size, train=True)  # fails now, before anything is compiled
    state = _initial_state(config, model, tx, loss, run_data, mesh)

    train_step = make_train_step(
        model,
        tx,
        loss,
        **optimizer_step_options(spec, hparams, config.loss.name, chosen_hparams(config.loss), batch_size),
        mixing=get_mixing(config.mixing.name, **chosen_hparams(config.mixing)),
        augment=_augment(config),
        num_train=num_train,
        mesh=mesh,
        unroll_sub_batches=unroll_sub_batches(total_steps),
    )
    eval_step = make_eval_step(model)

    def loss_at(logits: jax.Array, labels: jax.Array, loss_state: Any, mask: jax.Array | None = None) -> jax.Array:
        return loss.loss(logits, labels, loss_state, mask=mask, indices=jnp.zeros_like(labels))

    def state_is_good(state: TrainState, batch: dict) -> jax.Array:
        """Whether ``state`` may be checkpointed: finite throughout, finite (inference) loss on ``batch``."""
        logits = eval_step(state.params, state.model_state, batch["image"])
        return all_finite(state) & jnp.isfinite(loss_at(logits, batch["label"], state.loss_state))

    return Run(
        config=config,
        data=run_data,
        model=model,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        init_state=state,
        train_step=jax.jit(train_step, out_shardings=sharding.replicated_sharding(mesh)),
        eval_step=jax.jit(eval_step),
        mesh=mesh,
        state_is_good=jax.jit(state_is_good),
        optimizer=spec,
        loss=loss,
        loss_at=jax.jit(loss_at),
        loss_epoch_update=jax.jit(loss.epoch_update),
    )


def check_run_data(run_data: RunData) -> None:
    """Raises ``ValueError`` when a split has labels outside ``[0, K)`` or non-finite images.

    Runs on the host before anything is jitted: inside the train step a bad label would only show
    up later as a NaN loss, indistinguishable from divergence.
    """
    for split in ("train", "val", "test"):
        dataset = getattr(run_data, split)
        check_labels(dataset.labels, run_data.num_classes, where=f"the {split} split")
        # Streamed splits are uint8 records standardised by a finite normalizer: finite by
        # construction, and reading them all here would defeat streaming.
        if not len(dataset.labels) or isinstance(dataset.images, data.StreamedImages):
            continue
        finite = np.isfinite(dataset.images).reshape(len(dataset.labels), -1).all(axis=1)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ValueError(
                f"the {split} split: image {index} contains NaN or inf "
                f"({int((~finite).sum())} such images); fix the data or its normalisation."
            )


def load_trained(workdir: str, step: int | None = None, run_data: RunData | None = None) -> tuple[Run, TrainState]:
    """Rebuilds a saved run from ``<workdir>/config.json`` and restores its checkpoint.

    Args:
      workdir: a run directory written by ``train_and_evaluate``.
      step: the checkpoint step (default: the newest).
      run_data: the run's data, when already loaded (must match the saved config).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a sam_jax run directory.")
    with open(path) as f:
        config = ml_collections.ConfigDict(with_defaults(json.load(f)))
    run = build_run(config, run_data)
    checkpointer = Checkpointer(workdir)
    try:
        return run, checkpointer.restore(run.init_state, step)
    finally:
        checkpointer.close()
