"""Writes a dataset split to sharded ArrayRecord files (layout: ``sam_jax.data.array_record_format``).

Examples are written one at a time, so a split larger than memory (ImageNet) can be converted from
an iterator that decodes one image at a time, e.g. :func:`sam_jax.data.read_image_folder`.
"""

import os
from collections.abc import Iterable

import numpy as np

from sam_jax.data.array_record_format import (
    LABELS_FILE,
    ArrayRecordMetadata,
    encode_example,
    shard_name,
    write_metadata,
)
from sam_jax.data.dataset import ArrayDataset

# One record per compressed chunk: what fast reads by key need (grain's ArrayRecordDataSource).
WRITER_OPTIONS = "group_size:1"
STREAMING_EXTRA_HINT = "install the streaming extra: pip install -e '.[streaming]' (grain and array-record)"


def write_array_record(
    examples: ArrayDataset | Iterable[tuple[np.ndarray, int]],
    directory: str,
    *,
    name: str,
    split: str,
    num_classes: int | None = None,
    examples_per_shard: int = 10_000,
) -> ArrayRecordMetadata:
    """Writes one split, in the order given, as ArrayRecord shards plus ``labels.npy`` and ``metadata.json``.

    Record ``k`` is the ``k``-th example given (the reader's key ``k``); ``metadata.json`` is written
    last, so a directory that has one holds a complete split.

    Args:
      examples: an ``ArrayDataset`` with ``uint8`` images (as loaded, before normalisation), or an
        iterable of ``(image, label)`` pairs with ``uint8 [H, W, C]`` images of one shape.
      directory: where to write; created if missing, and must hold no files yet.
      name: the dataset's name, recorded in the metadata (``config.data.name`` of runs that read it).
      split: the split's name, recorded in the metadata.
      num_classes: K; taken from ``examples`` when it is an ``ArrayDataset`` (then it must agree).
      examples_per_shard: records per file (the last file holds the rest).

    Returns:
      The metadata written.

    Raises:
      ValueError: if an image is not ``uint8 [H, W, C]`` of the first image's shape, a label is
        outside ``[0, num_classes)``, ``num_classes`` is missing or disagrees, there are no
        examples, or ``examples_per_shard`` is not positive.
      FileExistsError: if ``directory`` already holds files.
      ImportError: if ``array-record`` is not installed.
    """
    try:
        from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(f"Writing ArrayRecord files needs array-record: {STREAMING_EXTRA_HINT}.") from err
    if isinstance(examples, ArrayDataset):
        if num_classes is not None and num_classes != examples.num_classes:
            raise ValueError(f"num_classes={num_classes} disagrees with the dataset's {examples.num_classes}.")
        num_classes = examples.num_classes
        examples = zip(examples.images, examples.labels)
    if num_classes is None or num_classes <= 0:
        raise ValueError(f"Need num_classes > 0 for an iterator of examples, got {num_classes}.")
    if examples_per_shard <= 0:
        raise ValueError(f"examples_per_shard must be positive, got {examples_per_shard}.")
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        raise FileExistsError(f"{directory!r} is not empty; write each split into a new (or emptied) directory.")

    labels: list[int] = []
    shards: list[str] = []
    image_shape: tuple[int, ...] | None = None
    writer = None
    try:
        for index, (image, label) in enumerate(examples):
            image = np.asarray(image)
            if image_shape is None:
                image_shape = image.shape
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape != image_shape:
                raise ValueError(
                    f"Example {index}: image {image.dtype} {image.shape}; every image must be uint8 "
                    f"[H, W, C] of the first one's shape {image_shape} (write images before normalisation)."
                )
            if not 0 <= int(label) < num_classes:
                raise ValueError(f"Example {index}: label {int(label)} is outside [0, {num_classes}).")
            if index % examples_per_shard == 0:
                if writer is not None:
                    writer.close()
                shards.append(shard_name(len(shards)))
                writer = array_record_module.ArrayRecordWriter(os.path.join(directory, shards[-1]), WRITER_OPTIONS)
            writer.write(encode_example(image, int(label)))
            labels.append(int(label))
    finally:
        if writer is not None:
            writer.close()
    if not labels:
        raise ValueError(f"No examples to write to {directory!r}.")
    np.save(os.path.join(directory, LABELS_FILE), np.asarray(labels, np.int32))
    metadata = ArrayRecordMetadata(name, split, len(labels), tuple(image_shape), num_classes, tuple(shards))
    write_metadata(directory, metadata)
    return metadata
