"""Where each dataset's release files go under a data root, and reading a split from there.

A data root (the ``data_dir`` argument or ``$SAM_JAX_DATA_DIR``) holds one folder per dataset,
named as the official archive extracts (``cifar-10-batches-py``, ``cifar-100-python``,
``CIFAR-10-C``) or, for releases that are loose files, as below (``mnist``, ``fashion-mnist``
like the Debian package, ``svhn``). MNIST and Fashion-MNIST share file names, so the folder
is what tells them apart.
"""

import os

from sam_jax.data.catalog import NUM_CLASSES, parse_corruption_split
from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.readers import (
    read_cifar10_corrupted,
    read_cifar_pickle_dir,
    read_idx_dataset,
    read_svhn_mat,
)

FOLDERS: dict[str, str] = {
    "mnist": "mnist",
    "fashion_mnist": "fashion-mnist",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "svhn": "svhn",
    "cifar10_corrupted": "CIFAR-10-C",
}

_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _idx_stems(split: str) -> tuple[str, str]:
    prefix = _IDX_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def expected_files(name: str, split: str) -> list[str]:
    """The release file names a split of ``name`` is read from (for messages and docs).

    Args:
      name: a dataset of ``FOLDERS``.
      split: a valid split of that dataset.

    Returns:
      File names relative to the dataset's folder.
    """
    if name in ("mnist", "fashion_mnist"):
        return [f"{stem}[.gz]" for stem in _idx_stems(split)]
    if name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    if name == "cifar100":
        return [split]
    if name == "svhn":
        return [f"{split}_32x32.mat"]
    corruption, _ = parse_corruption_split(split)
    return [f"{corruption}.npy", "labels.npy"]


def _find_idx(folder: str, stem: str) -> str:
    for candidate in (stem, f"{stem}.gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"Missing {os.path.join(folder, stem)}[.gz]")


def load_from_folder(name: str, split: str, folder: str) -> ArrayDataset:
    """Reads a split of ``name`` from ``folder``, the dataset's own folder (not the data root).

    Args:
      name: a dataset of ``FOLDERS`` (a name the catalog validated).
      split: a valid split of that dataset.
      folder: e.g. ``"<root>/cifar-10-batches-py"`` or ``"/usr/share/datasets/fashion-mnist"``.

    Returns:
      The split as stored (``uint8`` images, ``int32`` labels).

    Raises:
      FileNotFoundError: if a file of the split is missing.
      ValueError: if a file is corrupted.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"No folder {folder}")
    if name in ("mnist", "fashion_mnist"):
        images_stem, labels_stem = _idx_stems(split)
        return read_idx_dataset(_find_idx(folder, images_stem), _find_idx(folder, labels_stem), NUM_CLASSES[name])
    if name in ("cifar10", "cifar100"):
        return read_cifar_pickle_dir(folder, split, variant=name)
    if name == "svhn":
        return read_svhn_mat(os.path.join(folder, f"{split}_32x32.mat"))
    corruption, severity = parse_corruption_split(split)
    return read_cifar10_corrupted(folder, corruption, severity)
