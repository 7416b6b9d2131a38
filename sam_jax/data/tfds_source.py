"""Reading a split through TensorFlow Datasets, from a prepared TFDS data dir or a download.

``tensorflow_datasets`` is imported only when a TFDS dir is actually used, since the import
is slow and most runs read release files. A split prepared in a random-access format
(ArrayRecord, the format a download made here uses) is read without TensorFlow; one prepared
as TFRecord needs TensorFlow installed.
"""

import os

import numpy as np

from sam_jax.data.catalog import NUM_CLASSES, parse_corruption_split
from sam_jax.data.dataset import ArrayDataset

_TFDS_NAMES: dict[str, str] = {
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "svhn": "svhn_cropped",
    "cifar10_corrupted": "cifar10_corrupted",
}
# TFDS renamed two CIFAR-10-C corruptions; every other config is the release file stem.
_TFDS_CORRUPTIONS = {"glass_blur": "frosted_glass_blur", "elastic_transform": "elastic"}
_DEFAULT_TFDS_DIR = "~/tensorflow_datasets"


def tfds_data_dir() -> str:
    """The TFDS data dir TFDS itself uses: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or _DEFAULT_TFDS_DIR)


def tfds_name_and_split(name: str, split: str) -> tuple[str, str]:
    """Maps our (dataset, split) to TFDS's (builder name with config, split).

    Args:
      name: a dataset with a TFDS counterpart (every one but ``"digits"``).
      split: a valid split of that dataset.

    Returns:
      e.g. ``("svhn_cropped", "extra")`` or ``("cifar10_corrupted/gaussian_noise_3", "test")``.
    """
    if name == "cifar10_corrupted":
        corruption, severity = parse_corruption_split(split)
        config = f"{_TFDS_CORRUPTIONS.get(corruption, corruption)}_{severity}"
        return f"{_TFDS_NAMES[name]}/{config}", "test"
    return _TFDS_NAMES[name], split


def has_dataset_folder(name: str, split: str, tfds_dir: str) -> bool:
    """Whether ``tfds_dir`` has a folder for the dataset, prepared or not (TFDS is not imported)."""
    builder_name, _ = tfds_name_and_split(name, split)
    return os.path.isdir(os.path.join(tfds_dir, *builder_name.split("/")))


def _read_split(builder, split: str, num_classes: int) -> ArrayDataset:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        images = np.stack([record["image"] for record in records])
        labels = np.asarray([record["label"] for record in records])
    except NotImplementedError:
        # Prepared as TFRecord: only the tf.data path (which imports TensorFlow) can read it.
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        images, labels = arrays["image"], arrays["label"]
    return ArrayDataset(images.astype(np.uint8), labels.astype(np.int32), num_classes)


def load_from_tfds(name: str, split: str, *, tfds_dir: str, download: bool) -> ArrayDataset:
    """Reads a split with ``tfds.builder(...)``, optionally downloading and preparing it first.

    Args:
      name: a dataset with a TFDS counterpart (every one but ``"digits"``).
      split: a valid split of that dataset (TFDS's svhn ``"extra"`` and CIFAR-10-C configs
        are mapped by :func:`tfds_name_and_split`).
      tfds_dir: the TFDS data dir to read from (and to prepare into when downloading).
      download: run ``download_and_prepare`` (ArrayRecord format) when not yet prepared.

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N, H, W, C]`` and ``int32`` labels.

    Raises:
      FileNotFoundError: if the split is not prepared in ``tfds_dir`` and ``download`` is off.
      Exception: whatever TFDS raises when a download or a read fails (no network, no
        TensorFlow for a TFRecord dataset, ...); callers collect it into their report.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder_name, tfds_split = tfds_name_and_split(name, split)
    builder = tfds.builder(builder_name, data_dir=tfds_dir)
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(f"TFDS {builder_name!r} is not prepared in {tfds_dir}")
        builder.download_and_prepare(file_format="array_record")
    return _read_split(builder, tfds_split, NUM_CLASSES[name])
