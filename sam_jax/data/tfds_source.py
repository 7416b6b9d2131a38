"""Reading a split through TensorFlow Datasets, from a prepared TFDS data dir or a download.

``tensorflow_datasets`` is imported only when a TFDS dir is actually used, since the import
is slow and most runs read release files. A split prepared in a random-access format
(ArrayRecord, the format a download made here uses) is read without TensorFlow. Preparing a
split, or reading one prepared as TFRecord, needs TensorFlow (the ``tfds`` extra), which is
kept off the GPUs so that it does not take the memory JAX uses in the same process.

TFDS prepares a dataset offline from the files it would download when they are in
``<TFDS data dir>/downloads/manual/`` (:func:`manual_dir`), under the names of
:data:`TFDS_DOWNLOADS`; it checks their size and SHA-256 against its registered checksums.
"""

import contextlib
import importlib.util
import os
import socket
import urllib.parse
import urllib.request

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

# The files TFDS 4.9's builders download (the file names of their registered checksums), i.e.
# what to put in the manual dir to prepare each dataset without a network.
TFDS_DOWNLOADS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ),
    "fashion_mnist": (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ),
    "cifar10": ("cifar-10-binary.tar.gz",),
    "cifar100": ("cifar-100-binary.tar.gz",),
    "svhn": ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"),
    "cifar10_corrupted": ("CIFAR-10-C.tar",),
}


def tfds_data_dir() -> str:
    """The TFDS data dir TFDS itself uses: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or _DEFAULT_TFDS_DIR)


def manual_dir(tfds_dir: str) -> str:
    """Where TFDS looks for already downloaded files: ``<tfds_dir>/downloads/manual``."""
    return os.path.join(tfds_dir, "downloads", "manual")


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


def _keep_tensorflow_off_gpus() -> None:
    """Hides the GPUs from TensorFlow, when it is installed, before TFDS makes it run anything.

    A GPU build of TensorFlow reserves most of every GPU's memory the first time it runs an op,
    leaving none for JAX in the same process. Once TensorFlow has run, its devices are fixed
    (``RuntimeError``): whoever ran it first has chosen them.
    """
    if importlib.util.find_spec("tensorflow") is None:
        return
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")


def _check_download_hosts_resolve(builder, tfds_dir: str) -> None:
    """Raises ``ConnectionError`` at once when a file TFDS must download has a host that does not resolve.

    On a machine without a network TFDS would retry each URL ten times with exponential back-off
    (about 3.5 minutes) before failing. Files already in :func:`manual_dir` need no network, and
    a URL with a proxy set for its scheme has its host resolved by the proxy: neither is checked.
    """
    proxies = urllib.request.getproxies()
    for url, url_info in sorted((builder.url_infos or {}).items()):
        if url_info.filename and os.path.exists(os.path.join(manual_dir(tfds_dir), url_info.filename)):
            continue
        parsed = urllib.parse.urlparse(url)
        if proxies.get(parsed.scheme) or proxies.get("all"):
            continue
        host = parsed.hostname
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as err:
            raise ConnectionError(
                f"cannot resolve {host} to download {url} ({err}); without a network, put "
                f"{url_info.filename} in {manual_dir(tfds_dir)}/"
            ) from err


def _read_split(builder, split: str, num_classes: int) -> ArrayDataset:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    try:
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        images = np.stack([record["image"] for record in records])
        labels = np.asarray([record["label"] for record in records])
    except NotImplementedError:
        # Prepared as TFRecord: only the tf.data path (which imports TensorFlow) can read it.
        _keep_tensorflow_off_gpus()
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
      download: run ``download_and_prepare`` (ArrayRecord format) when not yet prepared; it
        takes the files in :func:`manual_dir` (checksums verified) instead of downloading them.

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N, H, W, C]`` and ``int32`` labels.

    Raises:
      FileNotFoundError: if the split is not prepared in ``tfds_dir`` and ``download`` is off.
      ConnectionError: at once, if a file to download has a host that does not resolve.
      Exception: whatever TFDS raises when a download or a read fails (a file whose checksum
        is not the registered one, no TensorFlow, ...); callers collect it into their report.
    """
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder_name, tfds_split = tfds_name_and_split(name, split)
    builder = tfds.builder(builder_name, data_dir=tfds_dir)
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(f"TFDS {builder_name!r} is not prepared in {tfds_dir}")
        _check_download_hosts_resolve(builder, tfds_dir)
        _keep_tensorflow_off_gpus()
        builder.download_and_prepare(file_format="array_record")
    return _read_split(builder, tfds_split, NUM_CLASSES[name])
