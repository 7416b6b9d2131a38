"""scikit-learn's bundled 8x8 digits (1797 images, 10 classes) as a dataset with two splits.

The data ships with scikit-learn and has no official test split, so one is fixed here: a
permutation drawn from ``DIGITS_SPLIT_SEED`` puts its first 1438 examples (80 %, rounded up)
in ``train`` and the remaining 359 in ``test``, the same on every machine and run.
"""

import math

import numpy as np

from sam_jax.data.dataset import ArrayDataset

DIGITS_SPLIT_SEED = 0
DIGITS_TRAIN_FRACTION = 0.8
# load_digits stores 4-bit intensities 0..16; rescaled so every dataset shares uint8 0..255.
_DIGITS_MAX_INTENSITY = 16


def load_digits_split(split: str) -> ArrayDataset:
    """Returns the fixed ``"train"`` (1438) or ``"test"`` (359) split of scikit-learn's digits.

    Args:
      split: ``"train"`` or ``"test"``.

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N, 8, 8, 1]`` (intensity ``v`` in 0..16 stored
      as ``round(255 v / 16)``) and 10 classes.
    """
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

    digits = load_digits()
    num_examples = digits.target.shape[0]
    num_train = math.ceil(DIGITS_TRAIN_FRACTION * num_examples)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(num_examples)
    indices = order[:num_train] if split == "train" else order[num_train:]
    images = np.rint(digits.images[indices] * (255 / _DIGITS_MAX_INTENSITY)).astype(np.uint8)
    return ArrayDataset(images[..., None], digits.target[indices].astype(np.int32), 10)
