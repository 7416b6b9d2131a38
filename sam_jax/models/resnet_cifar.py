"""CIFAR ResNets with 6n+2 layers (He et al. 2015, "Deep Residual Learning for Image
Recognition", arXiv:1512.03385, Sec. 4.2), with BatchNorm or filter response normalisation."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import TLU, FilterResponseNorm, batch_norm, conv1x1, conv3x3

NORMALIZATIONS = ("batch", "frn")
SHORTCUTS = ("A", "B")


class CifarBasicBlock(nn.Module):
    """Post-activation basic block: conv3x3 -> norm -> act -> conv3x3 -> norm, + shortcut -> act.

    With ``normalization="frn"`` every norm + ReLU pair becomes FRN + TLU, the norm before the
    addition is FRN alone and the ReLU after the addition becomes a TLU (Singh & Krishnan 2019,
    arXiv:1911.09737, Sec. 3, replace every BN + ReLU by FRN + TLU).
    """

    features: int
    strides: int
    normalization: str
    shortcut: str
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        frn = self.normalization == "frn"
        y = conv3x3(self.features, self.strides, self.dtype)(x)
        y = FilterResponseNorm(dtype=self.dtype)(y) if frn else nn.relu(batch_norm(train, self.dtype)(y))
        y = conv3x3(self.features, 1, self.dtype)(y)
        y = FilterResponseNorm(use_tlu=False, dtype=self.dtype)(y) if frn else batch_norm(train, self.dtype)(y)
        if x.shape != y.shape:
            x = self._project(x, train)
        return TLU()(x + y) if frn else nn.relu(x + y)

    def _project(self, x: jax.Array, train: bool) -> jax.Array:
        if self.shortcut == "A":
            # Option A (Sec. 4.2): subsample by striding, zero-pad the new channels; no parameters.
            x = x[:, :: self.strides, :: self.strides, :]
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        x = conv1x1(self.features, self.strides, self.dtype, name="shortcut_conv")(x)
        if self.normalization == "frn":
            return FilterResponseNorm(use_tlu=False, dtype=self.dtype, name="shortcut_norm")(x)
        return batch_norm(train, self.dtype, name="shortcut_norm")(x)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 3x3 conv with 16 filters, three stages of n basic blocks
    with 16, 32 and 64 filters (stride 2 at the start of stages 2 and 3), global average pooling
    and a linear head (He et al. 2015, arXiv:1512.03385, Sec. 4.2).

    With the default option-A shortcuts the parameter counts are those of the paper's Table 6:
    0.27M (ResNet-20), 0.46M (ResNet-32), 0.85M (ResNet-56). ``normalization="frn"`` gives the
    ResNet-20-FRN of Izmailov et al. 2021 ("What Are Bayesian Neural Network Posteriors Really
    Like?", arXiv:2104.14421) used by Möllenhoff & Khan 2022 ("SAM as an Optimal Relaxation of
    Bayes", arXiv:2210.01620); it has no batch statistics, so no model state.

    Attributes:
      num_classes: number of logits.
      depth: 6n + 2 (20, 32, 44, 56, 110, ...).
      normalization: "batch" (BatchNorm, statistics in ``"batch_stats"``) or "frn".
      shortcut: "A" (strided identity, zero-padded channels) or "B" (1x1 conv + norm projection)
        where the shape changes; identity elsewhere.
      dropout_rate: dropout before the head when > 0 (MC-dropout; needs a ``"dropout"`` rng when
        ``train``).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the head
        runs in float32, so logits (and calibration metrics) are not rounded to bfloat16.
    """

    num_classes: int
    depth: int = 20
    normalization: str = "batch"
    shortcut: str = "A"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {self.depth}.")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}.")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        blocks_per_stage = (self.depth - 2) // 6
        x = conv3x3(16, 1, self.dtype)(x.astype(self.dtype))
        if self.normalization == "frn":
            x = FilterResponseNorm(dtype=self.dtype)(x)
        else:
            x = nn.relu(batch_norm(train, self.dtype)(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = CifarBasicBlock(features, strides, self.normalization, self.shortcut, self.dtype)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)
