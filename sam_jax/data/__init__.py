"""Data layer: dataset readers and loading, splits, standardisation and batch pipelines.

Nothing here needs a network: :func:`load_dataset` reads release files from a data root, a
prepared TFDS dir or the Debian Fashion-MNIST package before it tries a TFDS download (see
``sam_jax.data.sources`` and docs/data.md). A split larger than memory is converted once to
ArrayRecord files (:func:`write_array_record`, ``python -m sam_jax.data.to_array_record``) and
streamed from them (:func:`open_array_record`; the ``streaming`` extra).
"""

from sam_jax.data.array_record_format import ArrayRecordMetadata
from sam_jax.data.array_record_format import read_metadata as read_array_record_metadata
from sam_jax.data.array_record_writer import write_array_record
from sam_jax.data.augment import augment_batch, cutout, random_crop, random_crop_and_flip, random_flip
from sam_jax.data.catalog import CIFAR10_CORRUPTIONS, DATASETS, DISPLAY_NAMES, NUM_CLASSES
from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.debian import ensure_debian_fashion_mnist
from sam_jax.data.image_archive import (
    ARCHIVES,
    ArchiveSpec,
    decode_image_archive,
    default_cache_dir,
    read_image_archive,
)
from sam_jax.data.image_folder import image_folder_classes, read_image_folder
from sam_jax.data.normalization import Normalizer, fit_normalizer, normalize
from sam_jax.data.padding import pad_to_size
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
from sam_jax.data.splits import subset, train_val_split
from sam_jax.data.streamed import StreamedImages, open_array_record

__all__ = [
    "ARCHIVES",
    "ArchiveSpec",
    "ArrayDataset",
    "ArrayRecordMetadata",
    "CIFAR10_CORRUPTIONS",
    "DATASETS",
    "DATA_DIR_ENV",
    "DISPLAY_NAMES",
    "NUM_CLASSES",
    "Normalizer",
    "StreamedImages",
    "augment_batch",
    "cutout",
    "decode_image_archive",
    "default_cache_dir",
    "ensure_debian_fashion_mnist",
    "epoch_permutation",
    "eval_batches",
    "fit_normalizer",
    "image_folder_classes",
    "load_dataset",
    "normalize",
    "pad_to_size",
    "num_batches",
    "open_array_record",
    "prefetch_to_device",
    "random_crop",
    "random_crop_and_flip",
    "random_flip",
    "read_array_record_metadata",
    "read_cifar10_corrupted",
    "read_cifar_pickle_dir",
    "read_image_archive",
    "read_image_folder",
    "read_idx",
    "read_idx_dataset",
    "read_svhn_mat",
    "subset",
    "train_batches",
    "train_val_split",
    "write_array_record",
]
