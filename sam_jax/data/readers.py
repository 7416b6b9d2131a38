"""Readers for the on-disk formats the datasets are released in; none needs a network.

Each reader checks what it reads: a missing file raises ``FileNotFoundError``, a truncated or
corrupted one a ``ValueError`` that names the file, says what is wrong and to download it again.
"""

import gzip
import math
import os
import pickle
import struct
import zlib
from typing import Any

import numpy as np
import scipy.io

from sam_jax.data.catalog import CIFAR10_CORRUPTIONS, CIFAR10_SEVERITIES
from sam_jax.data.dataset import ArrayDataset

# IDX type codes (third byte of the magic number), big-endian on disk.
_IDX_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}
_GZIP_MAGIC = b"\x1f\x8b"

_CIFAR_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "cifar10": {
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
    },
    "cifar100": {"train": ("train",), "test": ("test",)},
}
# CIFAR-100 has 20 coarse and 100 fine labels; the benchmarks use the fine ones.
_CIFAR_LABEL_KEY = {"cifar10": b"labels", "cifar100": b"fine_labels"}
_CIFAR_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
_CIFAR_IMAGE_SHAPE = (3, 32, 32)  # stored channel-first, row-major per channel

_SVHN_LABEL_FOR_ZERO = 10
# Exceptions scipy.io.loadmat raises on truncated or garbage input (no common base class).
_MAT_READ_ERRORS = (
    OSError,
    ValueError,
    LookupError,
    EOFError,
    TypeError,
    scipy.io.matlab.MatReadError,
)


def _corrupt(path: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {problem}. The file is truncated or corrupted; delete it and download it again.")


def _require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: {path}")


def _check_labels(path: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(path, f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})")
    return labels.astype(np.int32)


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (the MNIST / Fashion-MNIST format), gzipped or not.

    The format is a 4-byte magic number ``0x00 0x00 <type code> <ndim>``, then ``ndim``
    big-endian uint32 dimensions, then the row-major data. Compression is detected from the
    gzip magic bytes, not from the file name.

    Args:
      path: e.g. ``".../train-images-idx3-ubyte.gz"`` or the uncompressed file.

    Returns:
      The array with the shape of the header, in native byte order (``uint8`` for the images
      ``[N, 28, 28]`` and the labels ``[N]`` of MNIST).

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the gzip stream is broken, the header is not IDX, or the data is shorter
        or longer than the header says.
    """
    _require_file(path)
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise _corrupt(path, f"the gzip stream cannot be decompressed ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise _corrupt(path, f"the header {raw[:4].hex()!r} is not an IDX magic number")
    ndim = raw[3]
    data_offset = 4 + 4 * ndim
    if len(raw) < data_offset:
        raise _corrupt(path, f"the header announces {ndim} dimensions but the file ends first")
    shape = struct.unpack(f">{ndim}I", raw[4:data_offset])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = data_offset + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise _corrupt(
            path,
            f"holds {len(raw)} bytes (uncompressed) but an IDX array of shape {shape} and "
            f"type {dtype} needs {expected}",
        )
    array = np.frombuffer(raw, dtype=dtype, offset=data_offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable native-endian copy


def read_idx_dataset(images_path: str, labels_path: str, num_classes: int) -> ArrayDataset:
    """Reads an IDX images file ``[N, H, W]`` and its IDX labels file ``[N]`` as one split.

    Args:
      images_path: e.g. ``"train-images-idx3-ubyte.gz"``.
      labels_path: e.g. ``"train-labels-idx1-ubyte.gz"``.
      num_classes: 10 for MNIST and Fashion-MNIST.

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N, H, W, 1]``.

    Raises:
      FileNotFoundError: if a file does not exist.
      ValueError: if a file is corrupted or the two files disagree.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise _corrupt(images_path, f"expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise _corrupt(
            labels_path,
            f"expected {images.shape[0]} labels (one per image), got shape {labels.shape}",
        )
    return ArrayDataset(images[..., None], _check_labels(labels_path, labels, num_classes), num_classes)


def _read_cifar_batch(path: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    _require_file(path)
    with open(path, "rb") as f:
        try:
            # The releases are Python 2 pickles; encoding="bytes" reads their str keys as bytes.
            batch: Any = pickle.load(f, encoding="bytes")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise _corrupt(path, f"not a readable CIFAR pickle ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise _corrupt(path, f"expected a dict with keys b'data' and {label_key!r}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    row = math.prod(_CIFAR_IMAGE_SHAPE)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != row:
        raise _corrupt(path, f"expected uint8 data [N, {row}], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise _corrupt(path, f"expected {data.shape[0]} labels, got shape {labels.shape}")
    images = data.reshape((-1, *_CIFAR_IMAGE_SHAPE)).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_cifar_pickle_dir(directory: str, split: str, *, variant: str = "cifar10") -> ArrayDataset:
    """Reads a split of the CIFAR "python version" release from its extracted folder.

    CIFAR-10 (``cifar-10-batches-py/``): ``train`` = ``data_batch_1`` .. ``data_batch_5`` in
    order, ``test`` = ``test_batch``; labels under ``b"labels"``. CIFAR-100
    (``cifar-100-python/``): files ``train`` and ``test``; the 100 ``b"fine_labels"``.

    Args:
      directory: the extracted folder.
      split: ``"train"`` or ``"test"``.
      variant: ``"cifar10"`` or ``"cifar100"``.

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N, 32, 32, 3]`` (channel-last).

    Raises:
      ValueError: for an unknown ``variant`` or ``split``, or a corrupted file.
      FileNotFoundError: if a file of the split is missing.
    """
    if variant not in _CIFAR_FILES:
        raise ValueError(f"Unknown CIFAR variant {variant!r}; choose one of {sorted(_CIFAR_FILES)}.")
    if split not in _CIFAR_FILES[variant]:
        raise ValueError(f"Unknown CIFAR split {split!r}; choose one of {sorted(_CIFAR_FILES[variant])}.")
    paths = [os.path.join(directory, name) for name in _CIFAR_FILES[variant][split]]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"Missing CIFAR files: {', '.join(missing)}")
    batches = [_read_cifar_batch(path, _CIFAR_LABEL_KEY[variant]) for path in paths]
    num_classes = _CIFAR_NUM_CLASSES[variant]
    labels = np.concatenate([labels for _, labels in batches])
    return ArrayDataset(
        np.concatenate([images for images, _ in batches]),
        _check_labels(directory, labels, num_classes),
        num_classes,
    )


def read_svhn_mat(path: str) -> ArrayDataset:
    """Reads an SVHN cropped-digits file (``{train,test,extra}_32x32.mat``).

    The release stores ``X`` as ``[32, 32, 3, N]`` uint8 and ``y`` as ``[N, 1]`` in ``1..10``,
    where 10 stands for the digit 0; it is mapped to label 0 so that label = digit.

    Args:
      path: the ``.mat`` file (MATLAB v5, readable by ``scipy.io.loadmat``).

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N, 32, 32, 3]`` and labels in ``0..9``.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: if the file is truncated, not a .mat file, or lacks ``X``/``y``.
    """
    _require_file(path)
    try:
        contents = scipy.io.loadmat(path, variable_names=("X", "y"))
    except _MAT_READ_ERRORS as err:
        raise _corrupt(path, f"not a readable .mat file ({type(err).__name__}: {err})") from err
    if "X" not in contents or "y" not in contents:
        raise _corrupt(path, "expected variables 'X' and 'y'")
    images, labels = contents["X"], contents["y"].reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3:
        raise _corrupt(path, f"expected uint8 X [32, 32, 3, N], got {images.dtype} {images.shape}")
    if labels.shape[0] != images.shape[3]:
        raise _corrupt(path, f"X holds {images.shape[3]} images but y {labels.shape[0]} labels")
    if labels.size and (labels.min() < 1 or labels.max() > _SVHN_LABEL_FOR_ZERO):
        raise _corrupt(path, f"y spans [{labels.min()}, {labels.max()}], outside 1..10")
    labels = np.where(labels == _SVHN_LABEL_FOR_ZERO, 0, labels)
    images = np.ascontiguousarray(images.transpose(3, 0, 1, 2))
    return ArrayDataset(images, labels.astype(np.int32), 10)


def _load_npy(path: str) -> np.ndarray:
    _require_file(path)
    try:
        # Memory-mapped so that one severity (a fifth of the file) is all that is read.
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise _corrupt(path, f"not a readable .npy array ({type(err).__name__}: {err})") from err


def read_cifar10_corrupted(directory: str, corruption: str, severity: int) -> ArrayDataset:
    """Reads one corruption at one severity from the CIFAR-10-C release.

    ``<directory>/<corruption>.npy`` stacks the 5 severities of the 10,000 test images,
    ``[5 * 10000, 32, 32, 3]`` uint8, severity ``s`` being rows ``(s-1)*10000 .. s*10000``;
    ``labels.npy`` ``[50000]`` repeats the test labels once per severity. Any ``N`` divisible
    by 5 is accepted, so small files in the same layout work too.

    Args:
      directory: the extracted ``CIFAR-10-C`` folder.
      corruption: one of ``CIFAR10_CORRUPTIONS`` (the file stem, e.g. ``"gaussian_noise"``).
      severity: 1 (mildest) .. 5.

    Returns:
      ``ArrayDataset`` with ``uint8`` images ``[N / 5, 32, 32, 3]`` and 10 classes.

    Raises:
      ValueError: for an unknown corruption or severity, or a corrupted file.
      FileNotFoundError: if a file is missing.
    """
    if corruption not in CIFAR10_CORRUPTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}; choose one of {list(CIFAR10_CORRUPTIONS)}.")
    if severity not in CIFAR10_SEVERITIES:
        raise ValueError(f"Severity must be one of {list(CIFAR10_SEVERITIES)}, got {severity!r}.")
    images_path = os.path.join(directory, f"{corruption}.npy")
    labels_path = os.path.join(directory, "labels.npy")
    images, labels = _load_npy(images_path), _load_npy(labels_path)
    num_severities = len(CIFAR10_SEVERITIES)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] % num_severities:
        raise _corrupt(
            images_path,
            f"expected uint8 images [{num_severities} * n, H, W, C], got {images.dtype} {images.shape}",
        )
    if labels.shape != images.shape[:1]:
        raise _corrupt(labels_path, f"expected {images.shape[0]} labels, got shape {labels.shape}")
    per_severity = images.shape[0] // num_severities
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    return ArrayDataset(np.array(images[rows]), _check_labels(labels_path, np.array(labels[rows]), 10), 10)
