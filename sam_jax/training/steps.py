"""The jit-compiled train and eval steps shared by every experiment.

The train step computes the clean loss and gradient, builds a ``grad_fn(params) -> grads`` closure
over the batch for optimizers that need more gradients (the SAM family, bSAM, BulkSGD) and lets the
transformation do the rest. BatchNorm running statistics come from the clean pass; those of the
extra passes through ``grad_fn`` are dropped.

Two model contracts keep multi-member and Bayesian models out of the loop's business:

- A model with an ``ensemble_size`` attribute ``M > 0`` returns logits ``[B, M, K]``: training
  averages the loss over members (each member's loss on every example), and prediction is the
  average of the members' softmax (``sam_jax.calibration.member_average_log_probs``).
- A model may ``sow`` dataset-level terms (a KL divergence to a prior) into the ``"penalties"``
  collection in train mode; the step adds their sum divided by the number of training examples N
  to the per-example loss (the negative ELBO per example).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sam_jax.calibration import member_average_log_probs
from sam_jax.losses import MixedObjective, StatefulLoss, get_mixing
from sam_jax.optim import DATA_AXIS, PER_DEVICE, device_vmap, split_into_sub_batches, unrolled_map
from sam_jax.training.state import TrainState

Batch = dict[str, jax.Array]
NO_MIXING = get_mixing("none")
# fold_in constant that separates the mixing key from the dropout key of the same step.
_MIXING_STREAM = 0x6D6978
# fold_in constant that separates the augmentation key from the dropout and mixing keys.
_AUGMENT_STREAM = 0x617567
LossFn = Callable[..., jax.Array]
# ``train_step(state, batch) -> (state, metrics)``.
TrainStep = Callable[[TrainState, Batch], tuple[TrainState, dict]]
Augment = Callable[[jax.Array, jax.Array], jax.Array]
# The collection a model sows dataset-level penalties (KL terms) into.
PENALTIES = "penalties"


def model_forward(
    model: nn.Module, params: Any, model_state: Any, images: jax.Array, *, train: bool, rng: jax.Array | None = None
) -> tuple[jax.Array, Any]:
    """Logits and the updated model state (running statistics change only when ``train``)."""
    logits, model_state, _ = _forward(model, params, model_state, images, train=train, rng=rng)
    return logits, model_state


def _forward(
    model: nn.Module, params: Any, model_state: Any, images: jax.Array, *, train: bool, rng: jax.Array | None
) -> tuple[jax.Array, Any, jax.Array]:
    """Logits, the updated model state and the sum of the sown ``"penalties"`` (0 without any)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if rng is not None else {}
    if not train:
        return model.apply(variables, images, train=False, rngs=rngs), model_state, jnp.zeros(())
    logits, updated = model.apply(variables, images, train=True, mutable=[*model_state, PENALTIES], rngs=rngs)
    updated = dict(updated)
    penalty = sum((jnp.sum(leaf) for leaf in jax.tree.leaves(updated.pop(PENALTIES, {}))), jnp.zeros(()))
    return logits, {**model_state, **updated}, penalty


def ensemble_size(model: nn.Module) -> int:
    """The number of members ``M`` of a model whose logits are ``[B, M, K]``; 0 for one model."""
    return int(getattr(model, "ensemble_size", 0) or 0)


def _over_members(members: int, logits: jax.Array, *per_example: jax.Array | None) -> tuple:
    """``[B, M, K]`` logits as ``[B * M, K]`` rows with every per-example array repeated to match."""
    if not members:
        return (logits, *per_example)
    repeated = (None if x is None else jnp.repeat(x, members, axis=0) for x in per_example)
    return (logits.reshape((-1, logits.shape[-1])), *repeated)


def _sub_batch_size(m: int, batch_size: int, mesh: Mesh | None) -> int:
    """Examples per m-sharpness sub-batch: ``m``, or the per-device batch for ``PER_DEVICE``."""
    if m != PER_DEVICE:
        return m
    devices = mesh.shape[DATA_AXIS]
    if batch_size % devices:
        raise ValueError(f"m={PER_DEVICE}: the batch of {batch_size} examples does not divide over {devices} devices.")
    return batch_size // devices


# The most sub-batches one device evaluates unrolled (``unroll_sub_batches``): the compiled step
# holds one copy of the model's gradient per sub-batch.
MAX_UNROLLED_SUB_BATCHES = 16


def _sub_batch_map(num_sub_batches: int, mesh: Mesh | None, unroll: bool) -> Callable[..., Callable[..., Any]]:
    """``map(fn, in_axes)`` over stacked sub-batches.

    On the devices that hold them when they divide evenly over ``mesh``'s data axis; otherwise where
    XLA places the work. Each device maps with ``jax.vmap``, or, when ``unroll`` and it holds at most
    ``MAX_UNROLLED_SUB_BATCHES``, with ``sam_jax.optim.unrolled_map``.
    """
    on_devices = mesh is not None and num_sub_batches % mesh.shape[DATA_AXIS] == 0
    local = num_sub_batches // mesh.shape[DATA_AXIS] if on_devices else num_sub_batches
    map_fn = unrolled_map if unroll and local <= MAX_UNROLLED_SUB_BATCHES else jax.vmap
    if on_devices:
        return lambda fn, in_axes: device_vmap(fn, mesh, in_axes, map_fn=map_fn)
    return map_fn


def example_gradient_moments(
    example_grad: Callable[[Any, Batch], Any], *, sequential: bool
) -> Callable[[Any, Batch], tuple[Any, Any]]:
    """``moments(params, data)``: the means over ``data``'s examples of ``example_grad(params, example)``
    and of its square, each example a batch of one (``make_train_step``'s ``per_example_moments``).

    Args:
      example_grad: the gradient of one example's loss, ``example_grad(params, example)``.
      sequential: go through the examples one after another, accumulating both sums (what the train
        step does on CPU, where XLA's batched products are slow and ``B`` stacked per-example
        gradients cost ``B`` times the parameters' memory); False: ``jax.vmap`` over the examples.
        Both give the same moments up to the order of the float sums.
    """

    def moments(params: Any, data: Batch) -> tuple[Any, Any]:
        examples = jax.tree_util.tree_map(lambda x: x[:, None], data)
        count = len(data["label"])
        if not sequential:
            grads = jax.vmap(example_grad, (None, 0))(params, examples)
            mean = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
            return mean, jax.tree_util.tree_map(lambda g: jnp.mean(g * g, axis=0), grads)

        def accumulate(sums: tuple[Any, Any], example: Batch) -> tuple[tuple[Any, Any], None]:
            grad = example_grad(params, example)
            total, squares = sums
            total = jax.tree_util.tree_map(jnp.add, total, grad)
            squares = jax.tree_util.tree_map(lambda s, g: s + g * g, squares, grad)
            return (total, squares), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (total, squares), _ = jax.lax.scan(accumulate, (zeros, zeros), examples)
        return tuple(jax.tree_util.tree_map(lambda x: x / count, part) for part in (total, squares))

    return moments


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformationExtraArgs,
    loss: StatefulLoss,
    descent_loss_fn: LossFn | None = None,
    *,
    m: int = 0,
    uses_clean_gradient: bool = True,
    mixing: MixedObjective = NO_MIXING,
    augment: Augment | None = None,
    num_train: int = 0,
    mesh: Mesh | None = None,
    per_example_moments: bool = False,
    unroll_sub_batches: bool = False,
) -> TrainStep:
    """Builds ``train_step(state, batch) -> (state, metrics)`` (not jitted; the loop jits it).

    :func:`donating_train_step` jits it (or the loop's jitted step) with the state's buffers donated.

    Args:
      model: the Flax module.
      tx: the optimizer; called as ``tx.update(grads, opt_state, params, grad_fn=grad_fn)``.
      loss: the training loss with its state (``sam_jax.losses.get_stateful_loss``); its gradient
        at ``params`` is ``grads`` (the ascent loss for SAM). Its state is read from
        ``state.loss_state`` and advanced by ``loss.step_update`` with the clean logits.
      descent_loss_fn: ``fn(logits, labels, mask=None)``, the loss ``grad_fn`` differentiates
        when the optimizer has its own (CSAM's eq. 4); None for the training loss.
      m: m-sharpness sub-batch size; 0 for none; ``sam_jax.optim.PER_DEVICE`` (-1) for one
        sub-batch per device of ``mesh`` (Foret et al.'s ``pmap`` SAM: each device perturbs with
        its own shard's gradient). Then ``grads`` and ``grad_fn`` work on stacked sub-batches (see
        ``sam_jax.optim.m_sharpness_sam``), every sub-batch's forward pass uses its own BatchNorm
        statistics and the running statistics are the mean of the sub-batches'.
      uses_clean_gradient: False when the optimizer takes all its gradients from ``grad_fn``
        (bSAM); the clean pass is then a forward pass only.
      mixing: how a batch becomes a loss (``sam_jax.losses.get_mixing``: none, mixup, MIT-L),
        keyed from the step's key so that a resumed run mixes identically; the ascent and descent
        passes of a SAM-family step see the same mixed batch.
      augment: ``augment(key, images) -> images`` (e.g. ``functools.partial`` of
        ``sam_jax.data.augment_batch``), applied to ``batch["image"]`` before anything else with
        the key ``fold_in(fold_in(state.rng, state.step), _AUGMENT_STREAM)``; None for no
        augmentation. The clean pass and every pass through ``grad_fn`` (SAM's ascent and descent)
        see the same augmented batch, and a resumed run augments identically.
      num_train: training examples N; the model's sown ``"penalties"`` enter the loss divided by
        N (needed only by models that sow them).
      mesh: the devices the loop splits the batch over along ``"data"``. When given and the
        number of m-sharpness sub-batches is a multiple of the device count, each device
        evaluates the sub-batches it holds (``sam_jax.optim.device_vmap``); the result is that of
        the ``jax.vmap`` used otherwise. Required for ``m = PER_DEVICE``.
      per_example_moments: ``grad_fn`` returns per-example gradient moments (VOGN's Gauss-Newton
        diagonal): called with parameters stacked over the sub-batches of ``m`` examples (one
        sub-batch of the whole batch when ``m = 0``), it returns ``(mean, mean_of_squares)``, each
        stacked ``[S, ...]``: the mean over sub-batch ``j``'s examples of their gradients, and of
        their squared gradients, at sub-batch ``j``'s parameters. Each example's forward pass is a
        batch of one (its own BatchNorm statistics); ``example_gradient_moments`` computes them, on CPU
        one example after another, elsewhere with ``jax.vmap``.
      unroll_sub_batches: evaluate the sub-batches (m-sharpness, per-example moments) one after
        another in the compiled step (``sam_jax.optim.unrolled_map``, up to
        ``MAX_UNROLLED_SUB_BATCHES`` per device) rather than with ``jax.vmap``: the same values, up to
        the order of float operations; faster on XLA:CPU for convolutional models, whose vmapped
        per-sub-batch weights become grouped convolutions, and slower to compile.

    Raises:
      ValueError: ``m = PER_DEVICE`` without ``mesh``.
    """
    if m == PER_DEVICE and mesh is None:
        raise ValueError(f"m={PER_DEVICE} (one sub-batch per device) needs the device mesh: make_train_step(mesh=...).")
    members = ensemble_size(model)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        mix_key = jax.random.fold_in(rng, _MIXING_STREAM)
        if augment is not None:
            batch = {**batch, "image": augment(jax.random.fold_in(rng, _AUGMENT_STREAM), batch["image"])}

        def training_loss(data: Batch) -> Callable[..., jax.Array]:
            def loss_fn(logits: jax.Array, labels: jax.Array, mask: jax.Array | None) -> jax.Array:
                logits, labels, mask, indices = _over_members(members, logits, labels, mask, data["index"])
                return loss.loss(logits, labels, state.loss_state, mask=mask, indices=indices)

            return loss_fn

        def descent_loss(data: Batch) -> Callable[..., jax.Array]:
            del data

            def loss_fn(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
                return descent_loss_fn(*_over_members(members, logits, labels, mask))

            return loss_fn

        def objective(
            loss_of: Callable[[Batch], Callable[..., jax.Array]],
        ) -> Callable[[Any, Batch], tuple[jax.Array, tuple[jax.Array, Any]]]:
            def value(params: Any, data: Batch) -> tuple[jax.Array, tuple[jax.Array, Any]]:
                def forward(images: jax.Array) -> tuple[jax.Array, Any]:
                    logits, new_state, penalty = _forward(model, params, state.model_state, images, train=True, rng=rng)
                    return logits, (new_state, penalty)

                loss_value, logits, (new_state, penalty) = mixing.objective(
                    mix_key, forward, loss_of(data), data["image"], data["label"]
                )
                if num_train:
                    loss_value = loss_value + penalty / num_train
                return loss_value, (logits, new_state)

            return value

        clean = objective(training_loss)
        descent = clean if descent_loss_fn is None else objective(descent_loss)
        descent_grad = jax.grad(descent, has_aux=True)
        if m or per_example_moments:
            batch_size = len(batch["label"])
            sub_batch_size = _sub_batch_size(m, batch_size, mesh) if m else batch_size
            sub_batches = split_into_sub_batches(batch, sub_batch_size)
            over_sub_batches = _sub_batch_map(batch_size // sub_batch_size, mesh, unroll_sub_batches)
            if uses_clean_gradient:
                (losses, (logits, sub_states)), grads = over_sub_batches(
                    jax.value_and_grad(clean, has_aux=True), (None, 0)
                )(state.params, sub_batches)
            else:
                losses, (logits, sub_states) = over_sub_batches(clean, (None, 0))(state.params, sub_batches)
                grads = None
            loss_value = jnp.mean(losses)
            logits = logits.reshape((-1,) + logits.shape[2:])
            model_state = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), sub_states)

            if per_example_moments:
                example_moments = example_gradient_moments(
                    lambda p, example: descent_grad(p, example)[0], sequential=jax.default_backend() == "cpu"
                )

                def grad_fn(stacked_params: Any) -> Any:
                    return over_sub_batches(example_moments, (0, 0))(stacked_params, sub_batches)
            else:

                def grad_fn(stacked_params: Any) -> Any:
                    return over_sub_batches(descent_grad, (0, 0))(stacked_params, sub_batches)[0]
        else:

            def grad_fn(params: Any) -> Any:
                return descent_grad(params, batch)[0]

            if uses_clean_gradient:
                (loss_value, (logits, model_state)), grads = jax.value_and_grad(clean, has_aux=True)(
                    state.params, batch
                )
            else:
                loss_value, (logits, model_state) = clean(state.params, batch)
                grads = None

        updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
        params = optax.apply_updates(state.params, updates)
        logits = jax.lax.stop_gradient(logits)
        member_logits, member_labels, member_indices = _over_members(members, logits, batch["label"], batch["index"])
        loss_state = loss.step_update(state.loss_state, member_logits, member_labels, indices=member_indices)
        prediction = member_average_log_probs(logits) if members else logits
        metrics = {
            "loss": loss_value,
            "accuracy": jnp.mean(jnp.argmax(loss.predict(prediction, state.loss_state), -1) == batch["label"]),
            "update_norm": optax.tree.norm(updates),
        }
        new_state = state._replace(
            step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state, loss_state=loss_state
        )
        return new_state, metrics

    return train_step


def donating_train_step(train_step: TrainStep) -> TrainStep:
    """``train_step`` jitted so that the state passed in gives its device buffers to the new state.

    Without donation a step holds two train states at its peak (the one passed in and the new
    one); with it, XLA writes the new parameters, optimizer and model state into the buffers of the
    old ones (``jax.jit(..., donate_argnums=0)``), which saves one state's worth of device memory.
    The result is bit-identical to ``train_step``'s (``tests/test_checkpoint_topology.py``).

    ``train_step`` may be jitted already (``Run.train_step``, with the loop's output shardings):
    the outer jit inlines it and keeps its shardings. Only the state is donated, never the batch.

    The caller must own the state it passes: after the call, every array of that state is deleted
    and reading one raises (except an array whose buffer something outside JAX still references,
    such as a NumPy view of a CPU array: JAX does not donate it). So pass a copy of a state that
    someone else keeps (``jax.tree.map(jnp.copy, run.init_state)``), and let nothing keep the state's arrays
    past the next step (a hook that stores them must copy them). A checkpoint of the state is safe:
    Orbax has the state on the host before ``Checkpointer.save`` returns
    (``sam_jax.training.checkpoint``).

    Args:
      train_step: ``train_step(state, batch) -> (state, metrics)`` from :func:`make_train_step`.

    Returns:
      The jitted step with the same signature and results.
    """
    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(model: nn.Module) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """``eval_step(params, model_state, images) -> logits`` in inference mode.

    For a model with members (``ensemble_size``), the logits are the log of the members' average
    softmax, so that every consumer of logits (calibration, losses, curvature) sees the ensemble.
    """

    members = ensemble_size(model)

    def eval_step(params: Any, model_state: Any, images: jax.Array) -> jax.Array:
        logits = model_forward(model, params, model_state, images, train=False)[0]
        return member_average_log_probs(logits) if members else logits

    return eval_step
