"""Data layer: dataset readers and loading, splits, standardisation and batch pipelines.

Nothing here needs a network: :func:`load_dataset` reads release files from a data root, a
prepared TFDS dir or the Debian Fashion-MNIST package before it tries a TFDS download (see
``sam_jax.data.sources`` and docs/data.md).
"""

from sam_jax.data.augment import augment_batch, cutout, random_crop, random_crop_and_flip, random_flip
from sam_jax.data.catalog import CIFAR10_CORRUPTIONS, DATASETS, NUM_CLASSES
from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.debian import ensure_debian_fashion_mnist
from sam_jax.data.normalization import Normalizer, fit_normalizer, normalize
from sam_jax.data.pipeline import epoch_permutation, eval_batches, num_batches, train_batches
from sam_jax.data.prefetch import prefetch_to_device
from sam_jax.data.readers import (
    read_cifar10_corrupted,
    read_cifar_pickle_dir,
    read_idx,
    read_idx_dataset,
    read_svhn_mat,
)
from sam_jax.data.sources import DATA_DIR_ENV, load_dataset
from sam_jax.data.splits import train_val_split

__all__ = [
    "ArrayDataset",
    "CIFAR10_CORRUPTIONS",
    "DATASETS",
    "DATA_DIR_ENV",
    "NUM_CLASSES",
    "Normalizer",
    "augment_batch",
    "cutout",
    "ensure_debian_fashion_mnist",
    "epoch_permutation",
    "eval_batches",
    "fit_normalizer",
    "load_dataset",
    "normalize",
    "num_batches",
    "prefetch_to_device",
    "random_crop",
    "random_crop_and_flip",
    "random_flip",
    "read_cifar10_corrupted",
    "read_cifar_pickle_dir",
    "read_idx",
    "read_idx_dataset",
    "read_svhn_mat",
    "train_batches",
    "train_val_split",
]
