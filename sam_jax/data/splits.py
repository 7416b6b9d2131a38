"""A fixed training subset and a held-out validation split, drawn from one seeded permutation."""

import numpy as np

from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.streamed import StreamedImages


def subset(ds: ArrayDataset, indices: np.ndarray) -> ArrayDataset:
    """The examples at ``indices``; a streamed split stays streamed (nothing is read)."""
    images = ds.images.take(indices) if isinstance(ds.images, StreamedImages) else ds.images[indices]
    return ArrayDataset(images, ds.labels[indices], ds.num_classes)


def train_val_split(
    ds: ArrayDataset, *, train_size: int | None, val_size: int, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Splits ``ds`` into a training subset and a disjoint validation split.

    A permutation of the ``N`` examples is drawn from ``seed``; ``train`` is its first
    ``train_size`` examples and ``val`` the next ``val_size``. The training subset therefore
    depends only on ``(seed, train_size)``, not on ``val_size``: e.g. the 5,000-example
    CIFAR-10 subset with a 5,000-example validation split of Morosini et al. (2026, "Too Sharp,
    Too Sure: When Calibration Follows Curvature", arXiv:2604.20614, App. C.1) is
    ``train_size=5000, val_size=5000``. The validation split is the held-out set for post-hoc
    temperature scaling.

    Args:
      ds: the dataset to split (usually a ``"train"`` split).
      train_size: number of training examples; ``None`` keeps all ``N - val_size`` that remain.
      val_size: number of validation examples (0 for none).
      seed: seed of the permutation.

    Returns:
      ``(train, val)``, each in the order of the permutation.

    Raises:
      ValueError: if a size is negative, the training part would be empty, or
        ``train_size + val_size > N``.
    """
    num_examples = ds.num_examples
    if val_size < 0 or (train_size is not None and train_size <= 0):
        raise ValueError(
            f"Need train_size > 0 (or None) and val_size >= 0, got train_size={train_size}, val_size={val_size}."
        )
    if train_size is None:
        train_size = num_examples - val_size
    if train_size <= 0 or train_size + val_size > num_examples:
        raise ValueError(
            f"train_size ({train_size}) + val_size ({val_size}) must be at most the {num_examples} "
            "examples, leaving at least one for training; lower one of them."
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    return (
        subset(ds, order[:train_size]),
        subset(ds, order[train_size : train_size + val_size]),
    )
