"""Per-batch losses from logits: cross-entropy, MSE and the CSAM loss (eq. 4)."""
from typing import Callable

from sam_jax.losses.classification import cross_entropy, mse

LossFn = Callable[..., "jax.Array"]

LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(name: str) -> LossFn:
    """Returns the loss ``fn(logits, labels, mask=None)`` registered under ``name``."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; choose one of {sorted(LOSSES)}.")
    return LOSSES[name]


__all__ = ["LOSSES", "cross_entropy", "get_loss", "mse"]
