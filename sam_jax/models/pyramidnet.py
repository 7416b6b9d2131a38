"""Additive PyramidNet for CIFAR (Han et al. 2016, "Deep Pyramidal Residual Networks",
arXiv:1610.02915) with optional ShakeDrop (Yamada et al. 2018, arXiv:1802.02375)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.models.layers import ShakeDrop, batch_norm, conv3x3


class PyramidBasicBlock(nn.Module):
    """Basic pyramidal block (PyramidNet paper, Fig. 6d): BN -> conv3x3 -> BN -> ReLU -> conv3x3 -> BN.

    The shortcut is parameter-free: 2x2 average pooling when the block downsamples, then zero
    padding of the new channels (Sec. 3.2 and Fig. 5b). ``shakedrop_survival`` set turns on
    ShakeDrop on the residual branch.
    """

    features: int
    strides: int
    shakedrop_survival: float | None
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = batch_norm(train, self.dtype)(x)
        y = conv3x3(self.features, self.strides, self.dtype)(y)
        y = nn.relu(batch_norm(train, self.dtype)(y))
        y = conv3x3(self.features, 1, self.dtype)(y)
        y = batch_norm(train, self.dtype)(y)
        if self.shakedrop_survival is not None:
            y = ShakeDrop(self.shakedrop_survival)(y, train)
        if self.strides > 1:
            x = nn.avg_pool(x, (self.strides, self.strides), strides=(self.strides, self.strides))
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.features - x.shape[-1])))
        return x + y


class PyramidNet(nn.Module):
    """Additive PyramidNet with basic blocks for 32x32 inputs.

    A 3x3 conv with 16 filters and BN, three stages of n = (depth - 2) / 6 blocks (stride 2 at
    stages 2 and 3), whose widths grow linearly from 16 by ``alpha / (3n)`` per block up to
    16 + alpha (each block uses the rounded width), then BN-ReLU, global average pooling
    and a linear head. PyramidNet-110 with alpha = 48 has 1.7M parameters (the PyramidNet
    paper's CIFAR results table); this is the CIFAR PyramidNet that Tan et al. (ICLR 2026,
    "Towards Understanding the Calibration Benefits of Sharpness-Aware Minimization") train.
    Foret et al. 2020 (arXiv:2010.01412) use PyramidNet-272 with alpha = 200 and
    bottleneck blocks, which this class does not build.

    With ``shakedrop=True`` block l of L gets ShakeDrop with survival probability
    ``p_l = 1 - (l / L) (1 - final_survival)`` (Yamada et al. 2018, arXiv:1802.02375, the linear decay
    rule with p_L = 0.5); it then needs a ``"dropout"`` rng when ``train``.

    Attributes:
      num_classes: number of logits.
      depth: 6n + 2 (110 for PyramidNet-110).
      alpha: total widening over the network.
      shakedrop: apply ShakeDrop to every residual branch.
      final_survival: p_L of the last block under ShakeDrop.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the head
        runs in float32, so logits (and calibration metrics) are not rounded to bfloat16.
    """

    num_classes: int
    depth: int = 110
    alpha: float = 48.0
    shakedrop: bool = False
    final_survival: float = 0.5
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if (self.depth - 2) % 6 != 0 or self.depth < 8:
            raise ValueError(f"PyramidNet depth must be 6n+2 with n >= 1 (basic blocks), got {self.depth}.")
        if not 0.0 < self.final_survival <= 1.0:
            raise ValueError(f"final_survival must lie in (0, 1], got {self.final_survival}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        blocks_per_stage = (self.depth - 2) // 6
        num_blocks = 3 * blocks_per_stage
        x = conv3x3(16, 1, self.dtype)(x.astype(self.dtype))
        x = batch_norm(train, self.dtype)(x)
        for index in range(num_blocks):
            stage, block = divmod(index, blocks_per_stage)
            strides = 2 if stage > 0 and block == 0 else 1
            width = int(round(16 + self.alpha * (index + 1) / num_blocks))
            survival = 1.0 - (index + 1) / num_blocks * (1.0 - self.final_survival) if self.shakedrop else None
            x = PyramidBasicBlock(width, strides, survival, self.dtype)(x, train)
        x = nn.relu(batch_norm(train, self.dtype)(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="head")(x)
