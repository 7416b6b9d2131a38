"""Building blocks shared by the convolutional models of the zoo.

Filter response normalisation with its thresholded linear unit, the ShakeDrop residual gate, and
the initialisers and layer shorthands every residual network here uses.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# He et al. 2015, "Delving Deep into Rectifiers", arXiv:1502.01852: variance 2 / fan_in for ReLU
# networks, the initialisation of the ResNet, WRN and PyramidNet papers.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv3x3(features: int, strides: int = 1, dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
    """A bias-free 3x3 convolution with "SAME" padding, He-normal initialised."""
    return nn.Conv(
        features,
        (3, 3),
        strides=(strides, strides),
        padding="SAME",
        use_bias=False,
        kernel_init=he_normal,
        dtype=dtype,
        name=name,
    )


def conv1x1(features: int, strides: int = 1, dtype: Any = jnp.float32, name: str | None = None) -> nn.Conv:
    """A bias-free 1x1 convolution (projection shortcuts, bottlenecks), He-normal initialised."""
    return nn.Conv(
        features,
        (1, 1),
        strides=(strides, strides),
        padding="VALID",
        use_bias=False,
        kernel_init=he_normal,
        dtype=dtype,
        name=name,
    )


def batch_norm(
    train: bool,
    dtype: Any = jnp.float32,
    scale_init: nn.initializers.Initializer = nn.initializers.ones,
    name: str | None = None,
) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (running-average momentum 0.9, epsilon 1e-5).

    Batch statistics are used when ``train`` (and the running averages in ``"batch_stats"`` are
    updated); the running averages otherwise. Flax reduces in float32 even when ``dtype`` is
    bfloat16, and the running averages stay float32.
    """
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name
    )


class FilterResponseNorm(nn.Module):
    """Filter response normalisation, optionally followed by a thresholded linear unit (TLU).

    Singh & Krishnan 2019, "Filter Response Normalization Layer: Eliminating Batch Dependence in
    the Training of Deep Neural Networks", arXiv:1911.09737, Sec. 3:
    ``y = gamma * x / sqrt(mean_{H,W}(x^2) + eps) + beta`` per example and channel, then
    ``z = max(y, tau)``. It uses no batch statistics, so it has no model state and behaves the
    same in training and evaluation. Parameters per channel: ``gamma``, ``beta`` and, with the
    TLU, ``tau``.

    Attributes:
      use_tlu: apply the TLU (it replaces the ReLU that would follow a BatchNorm).
      epsilon: the fixed ``eps`` (the paper's value for convolutional feature maps).
      dtype: computation dtype; the mean of squares is taken in float32.
    """

    use_tlu: bool = True
    epsilon: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        gamma = self.param("scale", nn.initializers.ones, (channels,))
        beta = self.param("bias", nn.initializers.zeros, (channels,))
        nu2 = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True)
        x = (x * jax.lax.rsqrt(nu2 + self.epsilon)).astype(self.dtype)
        y = gamma.astype(self.dtype) * x + beta.astype(self.dtype)
        if self.use_tlu:
            y = thresholded_linear_unit(self, y)
        return y


def thresholded_linear_unit(module: nn.Module, y: jax.Array, name: str = "tau") -> jax.Array:
    """``max(y, tau)`` with a learned per-channel ``tau`` created in ``module`` (FRN paper, Sec. 3)."""
    tau = module.param(name, nn.initializers.zeros, (y.shape[-1],))
    return jnp.maximum(y, tau.astype(y.dtype))


class TLU(nn.Module):
    """The thresholded linear unit ``max(y, tau)`` as a layer of its own (arXiv:1911.09737).

    Used where a ReLU acts on a sum, e.g. after a residual addition in a post-activation ResNet.
    """

    @nn.compact
    def __call__(self, y: jax.Array) -> jax.Array:
        return thresholded_linear_unit(self, y)


class ShakeDrop(nn.Module):
    """ShakeDrop regularisation of a residual branch (Yamada et al. 2018, "ShakeDrop
    Regularization for Deep Residual Learning", arXiv:1802.02375, Sec. 3).

    In training each example draws ``b ~ Bernoulli(survival)``, ``alpha ~ U[-1, 1]`` and
    ``beta ~ U[0, 1]``; the forward pass scales the branch by ``b + alpha - b * alpha`` and the
    backward pass by ``b + beta - b * beta`` (a straight-through split via ``stop_gradient``). In
    evaluation the branch is scaled by its expectation, ``survival`` (since ``E[alpha] = 0``). The
    randomness comes from the ``"dropout"`` rng stream.

    Attributes:
      survival: the probability ``p_l`` that the branch is kept unperturbed.
    """

    survival: float

    @nn.compact
    def __call__(self, branch: jax.Array, train: bool) -> jax.Array:
        if not train:
            return branch * self.survival
        keep_key, alpha_key, beta_key = jax.random.split(self.make_rng("dropout"), 3)
        shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
        keep = jax.random.bernoulli(keep_key, self.survival, shape).astype(branch.dtype)
        alpha = jax.random.uniform(alpha_key, shape, branch.dtype, -1.0, 1.0)
        beta = jax.random.uniform(beta_key, shape, branch.dtype, 0.0, 1.0)
        forward = keep + alpha - keep * alpha
        backward = keep + beta - keep * beta
        return backward * branch + jax.lax.stop_gradient((forward - backward) * branch)
