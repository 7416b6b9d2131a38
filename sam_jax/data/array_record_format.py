"""The on-disk layout of a dataset split stored as ArrayRecord files, and its ``metadata.json``.

A split is one directory::

    metadata.json                 what the split holds (read with :func:`read_metadata`)
    labels.npy                    [N] int32 labels, by record key (read at open: labels stay in memory)
    images-00000.array_record     records 0 .. S-1
    images-00001.array_record     records S .. 2S-1, and so on (S = examples per shard)

Record ``k`` (its key: the position in the shards listed by ``metadata.json``, in order) is one
example, :data:`RECORD_LAYOUT`: the label as 4 little-endian bytes (int32), then the image's
``H * W * C`` uint8 pixels in row-major ``(H, W, C)`` order. Every image of a split has the shape
in ``metadata.json``, so a record needs no header of its own; the label in the record keeps every
file self-contained (readable without ``labels.npy``) and lets the reader check that the two agree.
The files are written with ``group_size:1`` (one record per compressed chunk, zstd), the setting
grain's ``ArrayRecordDataSource`` needs for fast reads by key (it logs an error for any other).
"""

import json
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.npy"
FORMAT_NAME = "sam_jax.array_record"
FORMAT_VERSION = 1
RECORD_LAYOUT = "label: int32 little-endian (4 bytes), then the image: H*W*C uint8 in row-major (H, W, C) order"
_LABEL_BYTES = 4
_LABEL_DTYPE = np.dtype("<i4")


class ArrayRecordMetadata(NamedTuple):
    """What one split directory holds (its ``metadata.json``).

    Attributes:
      name: the dataset's name (``config.data.name`` of the runs that read it), e.g. ``"imagenet64"``.
      split: the split, e.g. ``"train"``.
      num_examples: number of records ``N``.
      image_shape: ``(H, W, C)`` of every image (``uint8``).
      num_classes: number of classes K of the dataset (labels are in ``[0, K)``).
      shards: file names of the shards relative to the directory, in record-key order.
    """

    name: str
    split: str
    num_examples: int
    image_shape: tuple[int, int, int]
    num_classes: int
    shards: tuple[str, ...]


def shard_name(index: int) -> str:
    """File name of shard ``index`` of a split."""
    return f"images-{index:05d}.array_record"


def encode_example(image: np.ndarray, label: int) -> bytes:
    """One record of :data:`RECORD_LAYOUT` (``image``: ``uint8 [H, W, C]``, ``label`` in int32 range)."""
    return np.asarray(label, _LABEL_DTYPE).tobytes() + np.ascontiguousarray(image).tobytes()


def decode_examples(records: Sequence[bytes], image_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of records of :data:`RECORD_LAYOUT`.

    Args:
      records: the records, as read from the files.
      image_shape: ``(H, W, C)`` from the split's metadata.

    Returns:
      ``(images, labels)``: fresh ``uint8 [n, H, W, C]`` and ``int32 [n]`` arrays.

    Raises:
      ValueError: if a record's length does not match ``image_shape`` (a file of another split or
        dataset, or a damaged one).
    """
    record_bytes = _LABEL_BYTES + math.prod(image_shape)
    for index, record in enumerate(records):
        if len(record) != record_bytes:
            raise ValueError(
                f"Record {index} of a read has {len(record)} bytes, but images of shape {tuple(image_shape)} "
                f"need {record_bytes}: the files do not match their metadata.json; convert the split again."
            )
    flat = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), record_bytes)
    labels = flat[:, :_LABEL_BYTES].copy().view(_LABEL_DTYPE).reshape(-1).astype(np.int32)
    return flat[:, _LABEL_BYTES:].reshape(len(records), *image_shape).copy(), labels


def write_metadata(directory: str, metadata: ArrayRecordMetadata) -> None:
    """Writes ``metadata.json`` atomically (a temporary file renamed), so that it exists only complete."""
    content = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "record_layout": RECORD_LAYOUT, "dtype": "uint8"}
    content.update(metadata._asdict())
    path = os.path.join(directory, METADATA_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(content, f, indent=2)
    os.replace(path + ".tmp", path)


def read_metadata(directory: str) -> ArrayRecordMetadata:
    """The metadata of a split directory written by :func:`sam_jax.data.write_array_record`.

    Raises:
      FileNotFoundError: if ``directory`` has no ``metadata.json`` (not converted, or not finished).
      ValueError: if the file is not this format or version, or lacks a field.
    """
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {directory!r} is not a converted split. Write one with "
            "`python -m sam_jax.data.to_array_record` (docs/data.md, 'Streaming from ArrayRecord')."
        )
    with open(path) as f:
        content = json.load(f)
    missing = [field for field in ArrayRecordMetadata._fields if field not in content]
    if content.get("format") != FORMAT_NAME or content.get("version") != FORMAT_VERSION or missing:
        raise ValueError(
            f"{path} is not {FORMAT_NAME} version {FORMAT_VERSION} (format={content.get('format')!r}, "
            f"version={content.get('version')!r}, missing fields {missing}); convert the split again with "
            "this version of sam_jax."
        )
    fields = {field: content[field] for field in ArrayRecordMetadata._fields}
    fields["image_shape"] = tuple(fields["image_shape"])
    fields["shards"] = tuple(fields["shards"])
    return ArrayRecordMetadata(**fields)
