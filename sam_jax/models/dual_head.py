"""A classifier with two heads on one backbone's features: a learnable linear head and a fixed
simplex-ETF head, stacked as logits ``[B, 2, K]`` (the model BalCAL trains).

References:
  Ni, Zhao, Gao, Guo and Zha, 2025, "Balancing Two Classifiers via A Simplex ETF Structure for Model
  Calibration", arXiv:2504.10007.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def simplex_etf(key: jax.Array, feature_dim: int, num_classes: int) -> jax.Array:
    """A random simplex ETF ``M = sqrt(K / (K - 1)) P (I - 11^T / K)``, shape ``[feature_dim, K]``.

    ``P`` has orthonormal columns (QR of a uniform random matrix); the columns of ``M`` have unit
    norm and pairwise cosine ``-1 / (K - 1)``. Needs ``feature_dim >= num_classes``.
    """
    if feature_dim < num_classes:
        raise ValueError(f"simplex_etf: feature_dim={feature_dim} must be >= num_classes={num_classes}.")
    basis, _ = jnp.linalg.qr(jax.random.uniform(key, (feature_dim, num_classes)))
    centring = jnp.eye(num_classes) - jnp.ones((num_classes, num_classes)) / num_classes
    return math.sqrt(num_classes / (num_classes - 1)) * basis @ centring


class DualHeadClassifier(nn.Module):
    """``backbone`` features ``h [B, F]`` -> ``[linear(h), normalise(h) @ M]`` of shape ``[B, 2, K]``.

    Attributes:
      backbone: builds the feature extractor from ``num_classes=feature_dim`` (a registry entry
        such as ``MLP``), so its last layer gives the ``F = feature_dim`` features.
      num_classes: K.
      feature_dim: F >= K.
      etf_seed: seed of the fixed ETF ``M`` (not a parameter: it is never trained).
    """

    backbone: Callable[..., nn.Module]
    num_classes: int
    feature_dim: int = 128
    etf_seed: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = self.backbone(num_classes=self.feature_dim)(x, train=train)
        linear = nn.Dense(self.num_classes, name="linear_head")(features)
        etf = simplex_etf(jax.random.PRNGKey(self.etf_seed), self.feature_dim, self.num_classes)
        unit = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
        return jnp.stack([linear, unit @ etf.astype(unit.dtype)], axis=1)


def dual_head(
    num_classes: int, *, backbone: str = "mlp", backbone_kwargs: Any = None, feature_dim: int = 128, etf_seed: int = 0
) -> DualHeadClassifier:
    """``DualHeadClassifier`` over the registry model ``backbone`` (built with ``backbone_kwargs``)."""
    from sam_jax.models import MODELS  # the registry imports this module

    if backbone not in MODELS:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {sorted(MODELS)}.")
    if feature_dim < num_classes:
        raise ValueError(f"dual_head: feature_dim={feature_dim} must be >= num_classes={num_classes}.")
    kwargs = dict(backbone_kwargs or {})
    return DualHeadClassifier(lambda **extra: MODELS[backbone](**kwargs, **extra), num_classes, feature_dim, etf_seed)
