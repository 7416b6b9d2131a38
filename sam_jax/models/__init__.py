"""Flax linen models and a registry so that a config names a model by string.

Every model is called as ``model.apply(variables, x, train=bool, ...)``; ``variables`` holds
``"params"`` and, for models with BatchNorm, ``"batch_stats"`` (everything but ``"params"`` is
"model state" and is carried by the train loop).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from sam_jax.models.dual_head import DualHeadClassifier, dual_head, simplex_etf
from sam_jax.models.ensembles import MIMO, BatchEnsemble, Rank1BNN, batch_ensemble, mimo, rank1_bnn
from sam_jax.models.lenet import LeNet5
from sam_jax.models.mlp import MLP
from sam_jax.models.pyramidnet import PyramidNet
from sam_jax.models.registry import Registry
from sam_jax.models.resnet_cifar import CifarResNet
from sam_jax.models.resnet_imagenet import ResNet
from sam_jax.models.vit import VisionTransformer
from sam_jax.models.wide_resnet import WideResNet

# The zoo (docs/models.md): fixed architectures as partials, so kwargs such as ``dtype``,
# ``dropout_rate`` or ``stem`` still reach the constructor. A model declares no hyper-parameter
# block: ``model.kwargs`` go to its constructor, which rejects what it does not take.
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
MODELS.register("mlp", MLP)
MODELS.register("dual_head", dual_head)
MODELS.register("batch_ensemble", batch_ensemble)
MODELS.register("mimo", mimo)
MODELS.register("rank1_bnn", rank1_bnn)
MODELS.register("lenet5", LeNet5)
MODELS.register("resnet20", functools.partial(CifarResNet, depth=20))
MODELS.register("resnet32", functools.partial(CifarResNet, depth=32))
MODELS.register("resnet56", functools.partial(CifarResNet, depth=56))
MODELS.register("resnet20_frn", functools.partial(CifarResNet, depth=20, normalization="frn"))
MODELS.register("wrn28_10", functools.partial(WideResNet, depth=28, widen_factor=10))
MODELS.register("wrn20_10", functools.partial(WideResNet, depth=20, widen_factor=10))
MODELS.register("pyramidnet110", functools.partial(PyramidNet, depth=110, alpha=48.0))
MODELS.register("resnet18", functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)))
MODELS.register("resnet50", functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), bottleneck=True))
MODELS.register(
    "vit_s32", functools.partial(VisionTransformer, patch_size=32, hidden_size=384, depth=12, num_heads=6, mlp_dim=1536)
)
MODELS.register(
    "vit_s16", functools.partial(VisionTransformer, patch_size=16, hidden_size=384, depth=12, num_heads=6, mlp_dim=1536)
)
MODELS.register(
    "vit_b16",
    functools.partial(VisionTransformer, patch_size=16, hidden_size=768, depth=12, num_heads=12, mlp_dim=3072),
)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds the model registered under ``name`` with ``num_classes`` outputs and ``kwargs``."""
    constructor = MODELS.lookup(name)
    try:
        return constructor(num_classes=num_classes, **kwargs)
    except TypeError as err:
        raise ValueError(f"Bad arguments {kwargs} for model {name!r}: {err}") from err


__all__ = [
    "DualHeadClassifier",
    "dual_head",
    "simplex_etf",
    "BatchEnsemble",
    "MIMO",
    "Rank1BNN",
    "batch_ensemble",
    "mimo",
    "rank1_bnn",
    "MLP",
    "MODELS",
    "Registry",
    "CifarResNet",
    "LeNet5",
    "PyramidNet",
    "ResNet",
    "VisionTransformer",
    "WideResNet",
    "create_model",
]
