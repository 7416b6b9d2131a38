"""The train state: everything a run needs to continue bit-identically after a restart."""

from typing import Any, NamedTuple

import jax
import optax


class TrainState(NamedTuple):
    """A pytree carried by the train loop and saved in every checkpoint.

    Attributes:
      step: optimizer steps taken so far (also fixes the data position and the step's PRNG key).
      params: model parameters.
      model_state: non-parameter variables such as BatchNorm ``batch_stats`` (``{}`` if none).
      opt_state: the optimizer's state.
      rng: base PRNG key; step ``t`` uses ``jax.random.fold_in(rng, t)``.
      loss_state: the training loss's state (``()`` for a loss without state; e.g. AdaFocal's
        per-bin gamma, CRL's correctness history), see ``sam_jax.losses.StatefulLoss``.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: optax.OptState
    rng: jax.Array
    loss_state: Any = ()
