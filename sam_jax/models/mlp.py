"""Fully connected classifier (the 2x200 tanh MLP of Morosini et al. 2026, arXiv:2604.20614, Sec. 3)."""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": nn.relu,
    "gelu": nn.gelu,
}


class MLP(nn.Module):
    """Flattens the input and applies ``Dense -> activation`` per hidden width, then a linear head.

    Attributes:
      num_classes: width of the output layer (logits).
      widths: hidden layer widths, e.g. ``(200, 200)``.
      activation: one of ``ACTIVATIONS`` ("tanh", "relu", "gelu").
      dropout_rate: dropout after each hidden activation when > 0 (MC-dropout; needs a ``dropout``
        rng when ``train``).
      dtype: computation dtype; parameters stay float32 (or float64 under ``jax_enable_x64``) and
        the head computes in float32 at least, so that logits are not rounded to bfloat16.
    """

    num_classes: int
    widths: Sequence[int] = (200, 200)
    activation: str = "tanh"
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        x = x.reshape((x.shape[0], -1)).astype(self.dtype)
        for width in self.widths:
            x = act(nn.Dense(width, dtype=self.dtype)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=jnp.promote_types(self.dtype, jnp.float32))(x)
