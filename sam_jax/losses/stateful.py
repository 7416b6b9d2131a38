"""The interface through which a generic train loop carries a loss with state (AdaFocal, CRL, BalCAL).

Every registered loss has a ``StatefulLoss`` (``get_stateful_loss(name, **hparams)``); for the
stateless ones the state is the empty tuple and both updates return it unchanged, so the loop can
treat all losses alike:

1. ``state = spec.init(num_train_examples, num_classes)`` once, stored in the train state (a pytree
   of arrays, checkpointed with it).
2. Every train step (inside the jitted step): ``spec.loss(logits, labels, state, mask=mask,
   indices=indices)`` is the objective (``indices``: the batch's positions in the training set);
   then ``state = spec.step_update(state, sg(logits), labels, mask=mask, indices=indices)`` with
   the logits of the step's clean forward pass.
3. At the end of every epoch, when ``spec.epoch_split`` is not None: an eval-mode pass over that
   split (``"validation"`` or ``"train"``) gives ``logits``, and
   ``state = spec.epoch_update(state, logits, labels, mask=mask)``.
4. Predictions (metrics, calibration) use ``spec.predict(logits, state)``.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

LossFn = Callable[..., jax.Array]


class StatefulLoss(NamedTuple):
    """A loss with state, as pure functions (a generic train loop needs no loss name)."""

    init: Callable[[int, int], Any]  # (num_examples, num_classes) -> state
    loss: Callable[..., jax.Array]  # (logits, labels, state, *, mask=None, indices=None) -> scalar
    step_update: Callable[..., Any]  # (state, logits, labels, *, mask=None, indices=None) -> state
    epoch_update: Callable[..., Any]  # (state, logits, labels, *, mask=None) -> state
    epoch_split: str | None  # split whose logits epoch_update needs: "validation", "train", None
    predict: Callable[[jax.Array, Any], jax.Array]  # (model logits, state) -> prediction logits


def keep_state(state: Any, *_, **__) -> Any:
    return state


def model_logits(logits: jax.Array, _state: Any) -> jax.Array:
    return logits


def stateless(loss_fn: LossFn) -> StatefulLoss:
    """Wraps ``loss_fn(logits, labels, mask)`` as a ``StatefulLoss`` whose state is ``()``."""

    def loss(logits, labels, _state, *, mask=None, indices=None):
        del indices
        return loss_fn(logits, labels, mask)

    return StatefulLoss(lambda num_examples, num_classes: (), loss, keep_state, keep_state, None, model_logits)


def at_initial_state(spec: StatefulLoss) -> LossFn:
    """``fn(logits, labels, mask=None)``: ``spec``'s loss at its initial state (for evaluation).

    The state is initialised for the batch itself (``indices = arange(B)``): CRL's empty history
    gives cross-entropy, AdaFocal its initial gamma, BalCAL its initial weight.
    """

    def loss(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        state = spec.init(labels.shape[0], logits.shape[-1])
        return spec.loss(logits, labels, state, mask=mask, indices=jax.numpy.arange(labels.shape[0]))

    return loss
