"""The jit-compiled train and eval steps shared by every experiment.

The train step computes the clean loss and gradient, builds a ``grad_fn(params) -> grads`` closure
over the batch for optimizers that need more gradients (the SAM family, bSAM, BulkSGD) and lets the
transformation do the rest. BatchNorm running statistics come from the clean pass; those of the
extra passes through ``grad_fn`` are dropped.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sam_jax.losses import MixedObjective, StatefulLoss, get_mixing
from sam_jax.optim import split_into_sub_batches
from sam_jax.training.state import TrainState

Batch = dict[str, jax.Array]
NO_MIXING = get_mixing("none")
# fold_in constant that separates the mixing key from the dropout key of the same step.
_MIXING_STREAM = 0x6D6978
# fold_in constant that separates the augmentation key from the dropout and mixing keys.
_AUGMENT_STREAM = 0x617567
LossFn = Callable[..., jax.Array]
Augment = Callable[[jax.Array, jax.Array], jax.Array]


def model_forward(
    model: nn.Module, params: Any, model_state: Any, images: jax.Array, *, train: bool, rng: jax.Array | None = None
) -> tuple[jax.Array, Any]:
    """Logits and the updated model state (running statistics change only when ``train``)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng} if rng is not None else {}
    if train and model_state:
        return model.apply(variables, images, train=True, mutable=list(model_state), rngs=rngs)
    return model.apply(variables, images, train=train, rngs=rngs), model_state


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformationExtraArgs,
    loss: StatefulLoss,
    descent_loss_fn: Optional[LossFn] = None,
    *,
    m: int = 0,
    uses_clean_gradient: bool = True,
    mixing: MixedObjective = NO_MIXING,
    augment: Optional[Augment] = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """Builds ``train_step(state, batch) -> (state, metrics)`` (not jitted; the loop jits it).

    Args:
      model: the Flax module.
      tx: the optimizer; called as ``tx.update(grads, opt_state, params, grad_fn=grad_fn)``.
      loss: the training loss with its state (``sam_jax.losses.get_stateful_loss``); its gradient
        at ``params`` is ``grads`` (the ascent loss for SAM). Its state is read from
        ``state.loss_state`` and advanced by ``loss.step_update`` with the clean logits.
      descent_loss_fn: ``fn(logits, labels, mask=None)``, the loss ``grad_fn`` differentiates
        when the optimizer has its own (CSAM's eq. 4); None for the training loss.
      m: m-sharpness sub-batch size; 0 for none. Then ``grads`` and ``grad_fn`` work on stacked
        sub-batches (see ``sam_jax.optim.m_sharpness_sam``) and the running statistics are the mean
        of the sub-batches'.
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
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        mix_key = jax.random.fold_in(rng, _MIXING_STREAM)
        if augment is not None:
            batch = {**batch, "image": augment(jax.random.fold_in(rng, _AUGMENT_STREAM), batch["image"])}

        def training_loss(data: Batch) -> Callable[..., jax.Array]:
            def loss_fn(logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
                return loss.loss(logits, labels, state.loss_state, mask=mask, indices=data["index"])

            return loss_fn

        def descent_loss(data: Batch) -> Callable[..., jax.Array]:
            del data
            return descent_loss_fn

        def objective(
            loss_of: Callable[[Batch], Callable[..., jax.Array]],
        ) -> Callable[[Any, Batch], tuple[jax.Array, tuple[jax.Array, Any]]]:
            def value(params: Any, data: Batch) -> tuple[jax.Array, tuple[jax.Array, Any]]:
                def forward(images: jax.Array) -> tuple[jax.Array, Any]:
                    return model_forward(model, params, state.model_state, images, train=True, rng=rng)

                loss_value, logits, new_state = mixing.objective(
                    mix_key, forward, loss_of(data), data["image"], data["label"]
                )
                return loss_value, (logits, new_state)

            return value

        clean = objective(training_loss)
        descent = clean if descent_loss_fn is None else objective(descent_loss)
        descent_grad = jax.grad(descent, has_aux=True)
        if m:
            sub_batches = split_into_sub_batches(batch, m)
            (losses, (logits, sub_states)), grads = jax.vmap(
                jax.value_and_grad(clean, has_aux=True), in_axes=(None, 0)
            )(state.params, sub_batches)
            loss_value = jnp.mean(losses)
            logits = logits.reshape((-1, logits.shape[-1]))
            model_state = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), sub_states)

            def grad_fn(stacked_params: Any) -> Any:
                return jax.vmap(descent_grad)(stacked_params, sub_batches)[0]
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
        loss_state = loss.step_update(
            state.loss_state, jax.lax.stop_gradient(logits), batch["label"], indices=batch["index"]
        )
        metrics = {
            "loss": loss_value,
            "accuracy": jnp.mean(jnp.argmax(loss.predict(logits, state.loss_state), -1) == batch["label"]),
            "update_norm": optax.tree.norm(updates),
        }
        return TrainState(state.step + 1, params, model_state, opt_state, state.rng, loss_state), metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, Any, jax.Array], jax.Array]:
    """``eval_step(params, model_state, images) -> logits`` in inference mode."""

    def eval_step(params: Any, model_state: Any, images: jax.Array) -> jax.Array:
        return model_forward(model, params, model_state, images, train=False)[0]

    return eval_step
