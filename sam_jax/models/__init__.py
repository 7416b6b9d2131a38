"""Flax linen models and a registry so that a config names a model by string.

Every model is called as ``model.apply(variables, x, train=bool, ...)``; ``variables`` holds
``"params"`` and, for models with BatchNorm, ``"batch_stats"`` (everything but ``"params"`` is
"model state" and is carried by the train loop).
"""
from typing import Any, Callable

import flax.linen as nn

from sam_jax.models.lenet import LeNet5
from sam_jax.models.mlp import MLP

MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": MLP, "lenet5": LeNet5}


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds the model registered under ``name`` with ``num_classes`` outputs and ``kwargs``."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.")
    try:
        return MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"Bad arguments {kwargs} for model {name!r}: {err}") from err


__all__ = ["MLP", "MODELS", "LeNet5", "create_model"]
