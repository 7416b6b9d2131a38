"""ImageNet ResNets (He et al. 2015, "Deep Residual Learning for Image Recognition",
arXiv:1512.03385, Table 1), shaped like torchvision's: projection (option B) shortcuts where the
shape changes, stride on the 3x3 convolution of bottleneck blocks ("ResNet v1.5")."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import batch_norm, conv1x1, conv3x3, he_normal

STEMS = ("imagenet", "cifar")


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut -> ReLU (ResNet-18/34)."""

    features: int
    strides: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = conv3x3(self.features, self.strides, self.dtype)(x)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv3x3(self.features, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype)(y)
        return nn.relu(_shortcut(x, y, self.strides, train, self.dtype) + y)


class BottleneckBlock(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3 (strided) -> BN -> ReLU -> conv1x1 (4x) -> BN, + shortcut
    -> ReLU (ResNet-50/101/152)."""

    features: int
    strides: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = conv1x1(self.features, 1, self.dtype)(x)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv3x3(self.features, self.strides, self.dtype)(y)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv1x1(4 * self.features, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype)(y)
        return nn.relu(_shortcut(x, y, self.strides, train, self.dtype) + y)


def _shortcut(x: jax.Array, y: jax.Array, strides: int, train: bool, dtype: Any) -> jax.Array:
    """Identity, or a 1x1 conv + BN projection (option B) when the block changes the shape."""
    if x.shape == y.shape:
        return x
    x = conv1x1(y.shape[-1], strides, dtype, name="shortcut_conv")(x)
    return batch_norm(train, dtype, name="shortcut_norm")(x)


class ResNet(nn.Module):
    """A ResNet with four stages of 64, 128, 256 and 512 (times the block expansion) filters.

    ``stem="imagenet"`` is the 7x7 stride-2 convolution followed by 3x3 stride-2 max pooling of
    the paper; ``stem="cifar"`` is a 3x3 stride-1 convolution without pooling, for 32x32 and
    64x64 inputs (the ResNet-18 that Tan et al., ICLR 2026, "Towards Understanding the Calibration
    Benefits of Sharpness-Aware Minimization", train on CIFAR and Tiny-ImageNet). With 1000
    classes ResNet-18 has 11.7M and ResNet-50 25.6M parameters (torchvision's counts).

    Attributes:
      num_classes: number of logits.
      stage_sizes: blocks per stage, (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
      bottleneck: bottleneck blocks (ResNet-50 and deeper) instead of basic blocks.
      stem: "imagenet" or "cifar".
      width: filters of the stem and the first stage (64 in the paper).
      dropout_rate: dropout before the head when > 0 (MC-dropout; needs a ``"dropout"`` rng when
        ``train``).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the head
        runs in float32, so logits (and calibration metrics) are not rounded to bfloat16.
    """

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    stem: str = "imagenet"
    width: int = 64
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = nn.Conv(
                self.width,
                (7, 7),
                strides=(2, 2),
                padding=((3, 3), (3, 3)),
                use_bias=False,
                kernel_init=he_normal,
                dtype=self.dtype,
            )(x)
            x = nn.relu(batch_norm(train, self.dtype)(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = nn.relu(batch_norm(train, self.dtype)(conv3x3(self.width, 1, self.dtype)(x)))
        block_class = BottleneckBlock if self.bottleneck else BasicBlock
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = block_class(self.width * 2**stage, strides, self.dtype)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)
