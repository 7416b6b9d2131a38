"""Per-channel standardisation with statistics of the training split.

``uint8`` images are first scaled to ``[0, 1]`` (``x / 255``), so a ``Normalizer`` fitted on
one dataset holds statistics on that scale, e.g. CIFAR-10's familiar ``mean ~ (0.49, 0.48, 0.45)``.
Float images are used as they are.
"""

import functools
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.streamed import StreamedImages

# Bounded float64 temporaries: CIFAR-10 at once would need a 1.2 GB float64 copy.
_CHUNK_EXAMPLES = 2048


class Normalizer(NamedTuple):
    """Per-channel statistics applied as ``(x - mean) / std``.

    Attributes:
      mean: ``[C]`` float32 channel means (on the ``[0, 1]`` scale for ``uint8`` images).
      std: ``[C]`` float32 channel standard deviations (population, ``ddof=0``).
    """

    mean: np.ndarray
    std: np.ndarray


def _chunks(images: np.ndarray) -> Iterator[np.ndarray]:
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    for start in range(0, images.shape[0], _CHUNK_EXAMPLES):
        yield images[start : start + _CHUNK_EXAMPLES].astype(np.float64) * scale


def fit_normalizer(ds: ArrayDataset) -> Normalizer:
    """Computes per-channel mean and standard deviation over all pixels of ``ds``.

    Two passes in float64 (mean, then mean squared deviation) so that the statistics do not
    suffer the cancellation of ``E[x^2] - E[x]^2``.

    Args:
      ds: the split the statistics come from (the training split, never the test split).

    Returns:
      ``Normalizer`` with ``[C]`` float32 ``mean`` and ``std``.

    Raises:
      ValueError: if ``ds`` is empty or a channel is constant (its ``std`` would be 0).
    """
    images = ds.images
    if images.shape[0] == 0:
        raise ValueError("Cannot fit a normalizer on an empty dataset.")
    num_values = images.size // images.shape[-1]
    reduce_axes = tuple(range(images.ndim - 1))
    mean = sum(chunk.sum(axis=reduce_axes) for chunk in _chunks(images)) / num_values
    variance = sum(((chunk - mean) ** 2).sum(axis=reduce_axes) for chunk in _chunks(images)) / num_values
    std = np.sqrt(variance)
    if np.any(std == 0):
        raise ValueError(
            f"Channels {np.flatnonzero(std == 0).tolist()} are constant over the dataset; "
            "standardising them would divide by zero."
        )
    return Normalizer(mean.astype(np.float32), std.astype(np.float32))


def _standardize(images: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """Float32 ``(x - mean) / std`` of ``images`` (``x / 255`` first for ``uint8``), elementwise."""
    standardized = images.astype(np.float32)
    if images.dtype == np.uint8:
        standardized /= 255.0
    standardized -= normalizer.mean
    standardized /= normalizer.std
    return standardized


def normalize(ds: ArrayDataset, normalizer: Normalizer) -> ArrayDataset:
    """Returns ``ds`` with float32 images ``(x - mean) / std`` (``x / 255`` first for ``uint8``).

    A split streamed from ArrayRecord files (:class:`sam_jax.data.StreamedImages`) stays streamed:
    the same elementwise arithmetic is applied to each batch read, so its values are those of the
    in-memory split, bit for bit.

    Args:
      ds: any split of the dataset the normalizer was fitted on.
      normalizer: statistics from :func:`fit_normalizer` on the training split.

    Returns:
      The same labels with standardised ``float32`` images.

    Raises:
      ValueError: if the normalizer's channel count differs from the images'.
    """
    num_channels = ds.images.shape[-1]
    if normalizer.mean.shape != (num_channels,) or normalizer.std.shape != (num_channels,):
        raise ValueError(
            f"Normalizer has {normalizer.mean.shape} statistics but the images have "
            f"{num_channels} channels; fit it on a split of the same dataset."
        )
    if isinstance(ds.images, StreamedImages):
        images = ds.images.transformed(functools.partial(_standardize, normalizer=normalizer), np.float32)
    else:
        images = _standardize(ds.images, normalizer)
    return ArrayDataset(images, ds.labels, ds.num_classes)
