"""LeNet-5 with ReLU activations (the Fashion-MNIST model of Möllenhoff & Khan 2022, arXiv:2210.01620, Table 1)."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class LeNet5(nn.Module):
    """conv5x5(6) -> maxpool2 -> conv5x5(16) -> maxpool2 -> 120 -> 84 -> num_classes, ReLU.

    The first convolution pads by 2 ("SAME") so that 28x28 inputs give the classic 5x5x16 feature
    map; 32x32 inputs (CIFAR) work too. ``dropout_rate > 0`` adds dropout before the two hidden
    dense layers, which enables MC-dropout evaluation (needs a ``dropout`` rng when ``train``).
    ``dtype`` is the computation dtype; the head computes in float32 at least, so that logits are not
    rounded to bfloat16.
    """

    num_classes: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        if x.ndim == 3:
            x = x[..., None]
        x = nn.relu(nn.Conv(6, (5, 5), padding="SAME", dtype=self.dtype)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(16, (5, 5), padding="VALID", dtype=self.dtype)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        for width in (120, 84):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, dtype=jnp.promote_types(self.dtype, jnp.float32))(x)
