"""The in-memory dataset every loader returns and every pipeline function consumes."""

from typing import NamedTuple

import numpy as np


class ArrayDataset(NamedTuple):
    """A labelled image classification split held as NumPy arrays.

    Attributes:
      images: ``[N, H, W, C]``; ``uint8`` pixel intensities in ``[0, 255]`` as loaded, or
        ``float32`` after :func:`sam_jax.data.normalize`.
      labels: ``[N]`` ``int32`` class indices in ``[0, num_classes)``.
      num_classes: number of classes of the dataset (not only those present in this split).
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    @property
    def num_examples(self) -> int:
        """Number of examples ``N`` (``len()`` of a NamedTuple counts its fields instead)."""
        return int(self.labels.shape[0])
