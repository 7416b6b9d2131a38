"""Vision Transformer (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale", arXiv:2010.11929)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class EncoderBlock(nn.Module):
    """Pre-norm transformer layer: x + MSA(LN(x)), then x + MLP(LN(x)) (ViT paper, eqs. 2-3)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        deterministic = not train
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            dropout_rate=self.dropout_rate,
            deterministic=deterministic,
        )(y, y)
        x = x + nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(1e-6),
        )(y)
        y = nn.Dropout(self.dropout_rate, deterministic=deterministic)(nn.gelu(y))
        y = nn.Dense(
            x.shape[-1],
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(1e-6),
        )(y)
        return x + nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)


class VisionTransformer(nn.Module):
    """ViT with a class token and learned 1-D position embeddings, classifying from the class token.

    Patches of ``patch_size`` are linearly embedded (a strided convolution), a class token is
    prepended, position embeddings (sized for the input seen at ``init``) are added, ``depth``
    pre-norm encoder blocks and a final LayerNorm follow, and a zero-initialised linear head reads
    the class token (ViT paper, Sec. 3.1, eqs. 1-4; no pre-logits layer, as when fine-tuning).
    ViT-S (width 384, depth 12, 6 heads, MLP 1536) has 22M parameters and ViT-B (768, 12, 12,
    3072) 86M at 224x224 with 1000 classes.

    Attributes:
      num_classes: number of logits.
      patch_size: side of the square patches (16 or 32).
      hidden_size: token width D.
      depth: number of encoder blocks.
      num_heads: attention heads.
      mlp_dim: hidden width of the MLPs.
      dropout_rate: dropout after the embeddings, on attention weights and in the MLPs when > 0
        (needs a ``"dropout"`` rng when ``train``).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the head
        runs in float32, so logits (and calibration metrics) are not rounded to bfloat16.
    """

    num_classes: int
    patch_size: int = 16
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        patch = (self.patch_size, self.patch_size)
        x = nn.Conv(self.hidden_size, patch, strides=patch, padding="VALID", dtype=self.dtype, name="patch_embedding")(
            x.astype(self.dtype)
        )
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, channels))
        x = jnp.concatenate([jnp.broadcast_to(class_token.astype(self.dtype), (batch, 1, channels)), x], axis=1)
        position = self.param("position_embedding", nn.initializers.normal(0.02), (1,) + x.shape[1:])
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + position.astype(self.dtype))
        for _ in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype)(x, train)
        x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
        head = nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name="head")
        return head(x[:, 0])
