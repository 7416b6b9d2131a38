"""Wide residual networks (Zagoruyko & Komodakis 2016, "Wide Residual Networks",
arXiv:1605.07146)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import batch_norm, conv1x1, conv3x3


class WideBasicBlock(nn.Module):
    """Pre-activation block B(3,3) with dropout between the convolutions (WRN paper, Fig. 1d).

    BN -> ReLU -> conv3x3 -> BN -> ReLU -> dropout -> conv3x3, plus the input, which passes a 1x1
    convolution when the shape changes (taken after the first BN-ReLU, as in the authors' code).
    """

    features: int
    strides: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pre = nn.relu(batch_norm(train, self.dtype)(x))
        y = conv3x3(self.features, self.strides, self.dtype)(pre)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = conv3x3(self.features, 1, self.dtype)(y)
        if x.shape != y.shape:
            x = conv1x1(self.features, self.strides, self.dtype, name="shortcut_conv")(pre)
        return x + y


class WideResNet(nn.Module):
    """WRN-d-k for 32x32 inputs: a 3x3 conv with 16 filters, three stages of n blocks with 16k,
    32k and 64k filters (stride 2 at stages 2 and 3), BN-ReLU, global average pooling and a
    linear head, where d = 6n + 4 (WRN paper, Table 1).

    WRN-28-10 has 36.5M parameters (WRN paper, CIFAR results). A depth that is not of the form 6n + 4 is
    rounded down to one, n = (d - 4) // 6; this is how "WRN-20-10" (the backbone of Tan et al., ICLR 2026,
    "Towards Understanding the Calibration Benefits of Sharpness-Aware Minimization", Sec. 5.3) is
    built here, with n = 2, i.e. the layout of WRN-16-10 (17.1M parameters).

    Attributes:
      num_classes: number of logits.
      depth: d (10, 16, 22, 28, 40, ...).
      widen_factor: k.
      dropout_rate: dropout between the two convolutions of each block (the paper uses 0.3); with
        it > 0, training and MC-dropout evaluation need a ``"dropout"`` rng.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the head
        runs in float32, so logits (and calibration metrics) are not rounded to bfloat16.
    """

    num_classes: int
    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if self.depth < 10:
            raise ValueError(f"WideResNet depth must be at least 10 (6n+4 with n >= 1), got {self.depth}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        blocks_per_stage = (self.depth - 4) // 6
        x = conv3x3(16, 1, self.dtype)(x.astype(self.dtype))
        for stage, base in enumerate((16, 32, 64)):
            for block in range(blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = WideBasicBlock(base * self.widen_factor, strides, self.dropout_rate, self.dtype)(x, train)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)
