"""On-device image augmentation: pure, jit-able functions of a PRNG key and an NHWC batch.

Each example gets its own crop offset, flip and Cutout square, drawn from the key, so the same
key gives the same batch. Called inside the jitted train step with a key folded from the step's
key, the augmentation costs no host work and no extra transfer. Images are expected already
standardised: the zeros that padding and Cutout write are then the mean pixel.
"""

import jax
import jax.numpy as jnp


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pads each image by ``padding`` pixels per side and crops it back at a random offset.

    The standard CIFAR augmentation with ``padding=4`` (He et al. 2015, "Deep Residual Learning
    for Image Recognition", arXiv:1512.03385, Sec. 4.2): each example shifts by an offset drawn
    uniformly from ``{-padding, ..., padding}`` along height and width, independently.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]``.
      padding: pixels of zero padding per side; 0 returns ``images`` unchanged.

    Returns:
      ``[B, H, W, C]`` array of the dtype of ``images``.
    """
    if padding == 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2, independently per example."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def random_crop_and_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """``random_crop`` with zero padding ``padding``, then ``random_flip`` (the CIFAR standard)."""
    crop_key, flip_key = jax.random.split(key)
    return random_flip(flip_key, random_crop(crop_key, images, padding))


def cutout(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """Zeroes one ``size x size`` square per image (DeVries & Taylor 2017, "Improved
    Regularization of Convolutional Neural Networks with Cutout", arXiv:1708.04552).

    The square's centre is uniform over the image, so squares near a border are clipped to the
    part inside the image, as in the paper.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]``.
      size: side of the square; 0 returns ``images`` unchanged.

    Returns:
      ``[B, H, W, C]`` array of the dtype of ``images``.
    """
    if size == 0:
        return images
    batch, height, width, _ = images.shape
    row_key, col_key = jax.random.split(key)
    top = jax.random.randint(row_key, (batch, 1, 1), 0, height) - size // 2
    left = jax.random.randint(col_key, (batch, 1, 1), 0, width) - size // 2
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)


def augment_batch(
    key: jax.Array, images: jax.Array, *, crop_padding: int = 4, flip: bool = True, cutout_size: int = 0
) -> jax.Array:
    """Random crop (zero padding ``crop_padding``), then optional flip, then optional Cutout.

    Args:
      key: PRNG key, e.g. ``jax.random.fold_in(step_key, 1)`` inside the train step.
      images: ``[B, H, W, C]`` standardised images.
      crop_padding: zero padding per side for ``random_crop``; 0 for no crop.
      flip: apply ``random_flip``.
      cutout_size: side of the ``cutout`` square; 0 for none.

    Returns:
      The augmented ``[B, H, W, C]`` batch.
    """
    crop_key, flip_key, cutout_key = jax.random.split(key, 3)
    images = random_crop(crop_key, images, crop_padding)
    if flip:
        images = random_flip(flip_key, images)
    return cutout(cutout_key, images, cutout_size)
