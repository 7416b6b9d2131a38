"""Per-batch losses from logits: cross-entropy, MSE and the CSAM loss (eq. 4).

``LOSSES`` registers the losses with the common signature ``fn(logits, labels, mask=None)``:

- ``"cross_entropy"``: mean ``-log p_y``.
- ``"mse"``: mean ``0.5 * ||f(x) - e_y||^2``.

``csam_loss(logits, labels, gamma, *, stop_gradient_weight=False, mask=None)`` is eq. (4) of
calibration-benefits-of-sam.txt. It needs ``gamma`` and is only the *descent* loss of CSAM (the
ascent uses cross-entropy), so the train loop binds it with ``optimizer.gamma`` instead of looking
it up in ``LOSSES``.
"""
from typing import Callable

import jax

from sam_jax.losses.classification import cross_entropy, mse
from sam_jax.losses.csam import csam_loss

LossFn = Callable[..., jax.Array]

LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(name: str) -> LossFn:
    """Returns the loss ``fn(logits, labels, mask=None)`` registered under ``name``."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    return LOSSES[name]


__all__ = ["LOSSES", "cross_entropy", "csam_loss", "get_loss", "mse"]
