"""``load_dataset``: find a dataset split wherever it already is, in a fixed order.

Resolution order (the first place that has the split wins):

1. ``<data_dir>/<folder>/`` for an explicit ``data_dir`` argument,
2. ``$SAM_JAX_DATA_DIR/<folder>/``,
3. a TFDS data dir (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) that already holds it,
4. for Fashion-MNIST, the Debian package's ``/usr/share/datasets/fashion-mnist/``,
5. a TFDS download into that TFDS data dir (or, offline, TFDS preparing the files it would
   download from its manual dir, ``<TFDS data dir>/downloads/manual/``).

``<folder>`` is the dataset's folder of :data:`sam_jax.data.local.FOLDERS`. A data root may
instead hold an image-folder archive of :data:`sam_jax.data.image_archive.ARCHIVES`
(``cifar10-jpeg.tar.gz``, ``mnist-png.tar.gz``), read when the folder is not there and decoded once
into a cache directory. ``cifar10_jpeg`` exists only as that archive (no TFDS counterpart). A missing file
moves on to the next place; a corrupted one stops with its ``ValueError``. When no place has
the split, one ``FileNotFoundError`` lists every place and why it failed, and how to get the
data. ``"digits"`` ships with scikit-learn and is always found.
"""

import os

from sam_jax.data import debian, tfds_source
from sam_jax.data.catalog import validate_request
from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.digits import load_digits_split
from sam_jax.data.image_archive import ARCHIVE_SUFFIXES, ARCHIVES, find_archive, read_image_archive
from sam_jax.data.local import FOLDERS, expected_files, load_from_folder

DATA_DIR_ENV = "SAM_JAX_DATA_DIR"

_RELEASES: dict[str, str] = {
    "mnist": "the MNIST release files",
    "fashion_mnist": "the release files of github.com/zalandoresearch/fashion-mnist",
    "cifar10": "the extracted cifar-10-python.tar.gz of www.cs.toronto.edu/~kriz/cifar.html",
    "cifar100": "the extracted cifar-100-python.tar.gz of www.cs.toronto.edu/~kriz/cifar.html",
    "svhn": "the cropped-digits files of ufldl.stanford.edu/housenumbers",
    "cifar10_corrupted": "the extracted CIFAR-10-C.tar of zenodo.org/record/2535967",
}


def _load_from_root(name: str, split: str, root: str, cache_dir: str | None) -> ArrayDataset:
    """``<root>/<folder>/`` (release files), else ``<root>/<archive>`` (image-folder archive)."""
    reasons = []
    if name in FOLDERS:
        try:
            return load_from_folder(name, split, os.path.join(root, FOLDERS[name]))
        except FileNotFoundError as err:
            reasons.append(str(err))
    if name in ARCHIVES:
        try:
            archive = find_archive(root, ARCHIVES[name].stem)
        except FileNotFoundError as err:
            reasons.append(str(err))
        else:
            return read_image_archive(archive, split, ARCHIVES[name], cache_dir=cache_dir)
    raise FileNotFoundError("; ".join(reasons))


def _archive_hint(name: str) -> str:
    archive = ARCHIVES[name].stem + ARCHIVE_SUFFIXES[0]
    return (
        f"put {archive} (an image-folder archive: {ARCHIVES[name].stem}/{{train,test}}/<class>/<image>) in <DIR> "
        f"and pass data_dir=<DIR> or set {DATA_DIR_ENV}=<DIR>"
    )


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def _not_found_message(name: str, split: str, looked: list[str], tfds_dir: str) -> str:
    places = "\n".join(f"  {i}. {place}" for i, place in enumerate(looked, start=1))
    header = f"Dataset {name!r}, split {split!r} was not found. Looked in, in order:\n{places}\nTo get it:\n"
    if name not in FOLDERS:
        return f"{header}  - {_archive_hint(name)}"
    files = ", ".join(expected_files(name, split))
    tfds_name = tfds_source.tfds_name_and_split(name, split)[0]
    fixes = [
        f"put {files} in <DIR>/{FOLDERS[name]}/ ({_RELEASES[name]}) and pass "
        f"data_dir=<DIR> or set {DATA_DIR_ENV}=<DIR>",
        f"or put {', '.join(tfds_source.TFDS_DOWNLOADS[name])} (what TFDS downloads) in "
        f"{tfds_source.manual_dir(tfds_dir)}/ and install the tfds extra (pip install -e '.[tfds]'): "
        "load_dataset (with download=True, the default) then has TFDS prepare the dataset from them "
        "without a network",
        f"or, on a machine with a network and the tfds extra, load it once there (or run "
        f"tfds.builder({tfds_name!r}).download_and_prepare()) and copy its TFDS data dir here, "
        "pointing $TFDS_DATA_DIR at it",
    ]
    if name in ARCHIVES:
        fixes.append(f"or {_archive_hint(name)}")
    if name == "fashion_mnist":
        fixes.append(
            "or install the Debian package: "
            f"sudo apt-get install {debian.DEBIAN_FASHION_MNIST_PACKAGE} "
            f"(it puts the files in {debian.DEBIAN_FASHION_MNIST_DIR}/)"
        )
    return header + "\n".join(f"  - {fix}" for fix in fixes)


def load_dataset(
    name: str, split: str, *, data_dir: str | None = None, download: bool = True, cache_dir: str | None = None
) -> ArrayDataset:
    """Loads one split of a dataset from the first place that has it (see the module docstring).

    Args:
      name: one of :data:`sam_jax.data.DATASETS`.
      split: ``"train"`` or ``"test"``; svhn also ``"extra"``; for ``"cifar10_corrupted"``
        ``"<corruption>_<severity>"``, e.g. ``"gaussian_noise_3"`` (severity 1..5), which is
        a corrupted version of the CIFAR-10 test set.
      data_dir: a data root holding ``<folder>/`` with the release files, or the dataset's
        image-folder archive (e.g. ``cifar10-jpeg.tar.gz``); checked first.
      download: try a TFDS download as the last resort; False when the data is optional
        (e.g. looking for CIFAR-10-C corruptions) and a multi-GB download is not wanted.
      cache_dir: where splits decoded from an image-folder archive are kept; ``None`` =
        ``$SAM_JAX_CACHE_DIR``, else ``~/.cache/sam_jax``.

    Returns:
      The split as stored: ``uint8`` images ``[N, H, W, C]``, ``int32`` labels.

    Raises:
      ValueError: for an unknown ``name`` or ``split`` (listing the valid ones), or a
        corrupted file.
      FileNotFoundError: if no place has the split; the message lists every place looked at.
    """
    validate_request(name, split)
    if name == "digits":
        return load_digits_split(split)

    looked: list[str] = []
    for label, root in (
        ("data_dir argument", data_dir),
        (f"${DATA_DIR_ENV}", os.environ.get(DATA_DIR_ENV)),
    ):
        if not root:
            looked.append(f"{label}: not set")
            continue
        try:
            return _load_from_root(name, split, root, cache_dir)
        except FileNotFoundError as err:
            looked.append(f"{label}: {err}")

    tfds_dir = tfds_source.tfds_data_dir()
    if name not in FOLDERS:
        raise FileNotFoundError(_not_found_message(name, split, looked, tfds_dir))
    builder_name, _ = tfds_source.tfds_name_and_split(name, split)
    if tfds_source.has_dataset_folder(name, split, tfds_dir):
        try:
            return tfds_source.load_from_tfds(name, split, tfds_dir=tfds_dir, download=False)
        except Exception as err:  # pylint: disable=broad-except  # reported below, then next place
            looked.append(f"TFDS data dir {tfds_dir}: {_describe(err)}")
    else:
        looked.append(f"TFDS data dir {tfds_dir}: has no {builder_name!r} folder")

    if name == "fashion_mnist":
        try:
            return load_from_folder(name, split, debian.DEBIAN_FASHION_MNIST_DIR)
        except FileNotFoundError as err:
            looked.append(f"Debian package {debian.DEBIAN_FASHION_MNIST_PACKAGE}: {err}")

    if not download:
        looked.append(f"TFDS download of {builder_name!r}: not attempted (download=False)")
        raise FileNotFoundError(_not_found_message(name, split, looked, tfds_dir))
    try:
        return tfds_source.load_from_tfds(name, split, tfds_dir=tfds_dir, download=True)
    except Exception as err:  # pylint: disable=broad-except  # no network, no TensorFlow, ...
        looked.append(f"TFDS download of {builder_name!r} into {tfds_dir}: {_describe(err)}")
        raise FileNotFoundError(_not_found_message(name, split, looked, tfds_dir)) from err
