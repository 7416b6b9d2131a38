"""On-device augmentation: shapes, determinism, crops against a NumPy reference, flip rate, Cutout."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.data import augment_batch, cutout, random_crop, random_crop_and_flip, random_flip

# Optimising the compiled code costs more than running it once (see tests/test_model_zoo.py).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _images(batch: int, size: int = 8, channels: int = 3, seed: int = 0) -> np.ndarray:
    # Distinct positive values: every shift or flip of an image is distinguishable, and zeros can
    # only come from padding or Cutout.
    return np.random.default_rng(seed).uniform(1.0, 2.0, (batch, size, size, channels)).astype(np.float32)


def _candidates(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """Every crop of the zero-padded image, each also mirrored (the NumPy reference)."""
    height, width, _ = image.shape
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    crops = [
        padded[dy : dy + height, dx : dx + width] for dy, dx in itertools.product(range(2 * padding + 1), repeat=2)
    ]
    return crops + [crop[:, ::-1] for crop in crops]


def test_shapes_and_dtype_are_kept():
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def every_augmentation(key: jax.Array, images: jax.Array) -> tuple[jax.Array, ...]:
        return (
            random_crop(key, images, 4),
            random_flip(key, images),
            random_crop_and_flip(key, images),
            cutout(key, images, 8),
            augment_batch(key, images, crop_padding=4, flip=True, cutout_size=16),
        )

    for images in (jnp.asarray(_images(4, size=32)), jnp.asarray(_images(4, size=32)).astype(jnp.bfloat16)):
        for out in every_augmentation(jax.random.key(0), images):
            assert out.shape == images.shape and out.dtype == images.dtype


def test_same_key_same_batch_different_key_different_batch():
    images = jnp.asarray(_images(16))
    augment = jax.jit(lambda key, x: augment_batch(key, x, crop_padding=2, flip=True, cutout_size=3))
    first = augment(jax.random.key(1), images)
    np.testing.assert_array_equal(first, augment(jax.random.key(1), images))
    assert not np.array_equal(first, augment(jax.random.key(2), images))


def test_crops_are_shifts_of_the_zero_padded_image():
    padding = 2
    images = _images(32)
    out = np.asarray(jax.jit(random_crop_and_flip, static_argnums=2)(jax.random.key(3), jnp.asarray(images), padding))
    used_offsets = set()
    for image, augmented in zip(images, out):
        matches = [
            index for index, candidate in enumerate(_candidates(image, padding)) if np.array_equal(candidate, augmented)
        ]
        assert len(matches) == 1, "each output must be exactly one shifted (and maybe mirrored) crop"
        used_offsets.add(matches[0] % (2 * padding + 1) ** 2)
    assert len(used_offsets) > 5, "offsets should vary across the batch"


def test_crop_without_padding_is_identity():
    images = jnp.asarray(_images(2))
    np.testing.assert_array_equal(random_crop(jax.random.key(0), images, 0), images)


def test_flip_probability_is_one_half():
    images = jnp.asarray(_images(4000, size=4, channels=1))
    out = random_flip(jax.random.key(4), images)
    flipped = np.all(np.asarray(out) == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
    unchanged = np.all(np.asarray(out) == np.asarray(images), axis=(1, 2, 3))
    assert np.all(flipped ^ unchanged)
    # 4000 fair coins: standard deviation of the rate 0.008, so 0.04 is five of them.
    assert abs(flipped.mean() - 0.5) < 0.04


@pytest.mark.parametrize("size", [4, 5])
def test_cutout_zeroes_one_clipped_square(size):
    images = np.ones((256, 12, 12, 2), np.float32)
    out = np.asarray(cutout(jax.random.key(5), jnp.asarray(images), size))
    zero = out == 0
    np.testing.assert_array_equal(zero[..., 0], zero[..., 1])  # all channels of a pixel together
    clipped = 0
    for mask in zero[..., 0]:
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        assert rows.size and cols.size, "every image loses some pixels (the centre lies inside)"
        # The zeros fill a rectangle exactly, of side `size` unless a border clips it.
        assert mask.sum() == rows.size * cols.size
        assert np.array_equal(rows, np.arange(rows[0], rows[-1] + 1))
        assert np.array_equal(cols, np.arange(cols[0], cols[-1] + 1))
        for side, first, last in ((rows.size, rows[0], rows[-1]), (cols.size, cols[0], cols[-1])):
            assert side == size or (side < size and (first == 0 or last == 11))
        clipped += mask.sum() < size * size
    assert 0 < clipped < 256
    assert np.all(out[~zero] == 1.0)


def test_augment_batch_switches():
    images = jnp.asarray(_images(8))
    key = jax.random.key(6)
    np.testing.assert_array_equal(augment_batch(key, images, crop_padding=0, flip=False, cutout_size=0), images)
    assert np.any(np.asarray(augment_batch(key, images, crop_padding=0, flip=False, cutout_size=3)) == 0)
