"""A split read from ArrayRecord files on demand: for datasets larger than memory (ImageNet).

:func:`open_array_record` returns an ordinary :class:`ArrayDataset` whose ``labels`` are in memory
(``N`` int32) and whose ``images`` are a :class:`StreamedImages`: indexing it (``images[rows]``,
``images[a:b]``, ``images[i]``) reads those records through grain's ``ArrayRecordDataSource`` and
returns NumPy arrays, so the batch functions of ``sam_jax.data.pipeline``, the splits and the
standardisation take it unchanged, and the train loop reads only the rows of each batch it needs.
``train_batches`` and ``eval_batches`` read a streamed split's batches ahead in grain threads
(:func:`read_ahead`), in order. grain and array-record are the ``streaming`` extra; this module
imports grain only when a split is opened.
"""

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from sam_jax.data.array_record_format import LABELS_FILE, decode_examples, read_metadata
from sam_jax.data.array_record_writer import STREAMING_EXTRA_HINT
from sam_jax.data.dataset import ArrayDataset

# Examples per read when a whole split is turned into one array (``np.asarray(images)``).
_CHUNK_EXAMPLES = 1024


def _import_grain() -> Any:
    try:
        import grain  # pylint: disable=import-outside-toplevel
    except ImportError as err:
        raise ImportError(f"Streaming from ArrayRecord files needs grain: {STREAMING_EXTRA_HINT}.") from err
    return grain


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedImages:
    """The ``[N, H, W, C]`` images of a split stored in ArrayRecord files, read when indexed.

    It stands in for the ``images`` array of an :class:`ArrayDataset`: ``shape``, ``dtype``,
    ``ndim``, ``size``, ``len()``, and indexing by an integer, a slice, an integer array or a
    boolean mask, which reads the records and returns a fresh NumPy array (what NumPy indexing of
    the in-memory array returns). ``np.asarray(images)`` reads the whole split (it must fit in
    memory). Two operations read nothing and return another ``StreamedImages``: :meth:`take`, a
    subset (what ``train_val_split`` uses), and :meth:`transformed`, a function applied to every
    batch read (what ``normalize`` uses), so a standardised training subset is still streamed.

    Attributes:
      source: grain's ``ArrayRecordDataSource`` over the split's shards (record key -> bytes).
      record_labels: ``[num_records]`` labels by record key (``labels.npy``); every read checks that
        the records' own labels agree.
      image_shape: ``(H, W, C)`` of the stored ``uint8`` images.
      keys: the record key of each position (a subset or reordering), or None for all in order.
      transform: applied to each ``uint8 [n, H, W, C]`` batch read, or None.
      dtype: dtype of what reads return (``uint8``, or the transform's output dtype).
      read_threads: grain threads that read a batch iterator's batches ahead (:func:`read_ahead`);
        0 reads each batch when it is asked for.
    """

    source: Any
    record_labels: np.ndarray
    image_shape: tuple[int, int, int]
    keys: np.ndarray | None = None
    transform: Callable[[np.ndarray], np.ndarray] | None = None
    dtype: np.dtype = np.dtype(np.uint8)
    read_threads: int = 0

    def __len__(self) -> int:
        return len(self.record_labels) if self.keys is None else len(self.keys)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def _positions(self, index: Any) -> np.ndarray:
        """``index`` (an integer array or a boolean mask over the positions) as positions in ``0 .. N-1``."""
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"A boolean mask must have shape ({len(self)},), got {index.shape}.")
            return np.flatnonzero(index)
        if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
            raise IndexError(
                f"StreamedImages takes an integer, a slice, a 1-D integer array or a boolean mask; got "
                f"{index.dtype} {index.shape}."
            )
        index = index.astype(np.int64)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"Index out of range for {len(self)} images.")
        return np.where(index < 0, index + len(self), index)

    def _read(self, positions: np.ndarray) -> np.ndarray:
        keys = positions if self.keys is None else self.keys[positions]
        records = self.source.__getitems__(keys.tolist()) if len(keys) else []
        images, labels = decode_examples(records, self.image_shape)
        if not np.array_equal(labels, self.record_labels[keys]):
            raise ValueError(
                f"The records' labels disagree with {LABELS_FILE} (record key "
                f"{int(keys[np.argmax(labels != self.record_labels[keys])])}): the files of the split "
                "come from different conversions; convert it again."
            )
        return images if self.transform is None else self.transform(images)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):
            raise IndexError("StreamedImages are indexed along the examples only (no tuple of indices).")
        if isinstance(index, slice):
            return self._read(np.arange(*index.indices(len(self))))
        if isinstance(index, (int, np.integer)):
            return self._read(self._positions([index]))[0]
        return self._read(self._positions(index))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """Reads every image into one array (the whole split must fit in memory)."""
        if copy is False:
            raise ValueError("StreamedImages are read from files: an array of them is always a copy.")
        out = np.empty(self.shape, self.dtype)
        for start in range(0, len(self), _CHUNK_EXAMPLES):
            out[start : start + _CHUNK_EXAMPLES] = self[start : start + _CHUNK_EXAMPLES]
        return out if dtype is None else out.astype(dtype, copy=False)

    def take(self, indices: np.ndarray) -> "StreamedImages":
        """The images at ``indices`` (an integer array or boolean mask), in that order, without reading them."""
        positions = self._positions(indices)
        return dataclasses.replace(self, keys=positions if self.keys is None else self.keys[positions])

    def transformed(self, fn: Callable[[np.ndarray], np.ndarray], dtype: np.dtype) -> "StreamedImages":
        """These images with ``fn`` applied to each batch read (after any earlier transform), without reading them.

        Args:
          fn: maps a ``[n, H, W, C]`` batch to a batch of the same shape; it must act on each image
            alone (reads of different batchings must agree).
          dtype: the dtype ``fn`` returns.
        """
        previous = self.transform
        composed = fn if previous is None else (lambda images: fn(previous(images)))
        return dataclasses.replace(self, transform=composed, dtype=np.dtype(dtype))

    def __repr__(self) -> str:
        return f"StreamedImages(shape={self.shape}, dtype={self.dtype}, read_threads={self.read_threads})"


def open_array_record(directory: str, *, read_threads: int = 8) -> ArrayDataset:
    """Opens a split written by :func:`sam_jax.data.write_array_record`; reads only its metadata and labels.

    Args:
      directory: the split's directory (holding ``metadata.json``).
      read_threads: grain threads reading batches ahead in ``train_batches`` / ``eval_batches``
        (each holds one batch in memory); 0 reads each batch when asked for.

    Returns:
      An ``ArrayDataset`` with :class:`StreamedImages` (``uint8``) and in-memory ``int32`` labels.

    Raises:
      FileNotFoundError: if ``directory`` holds no converted split.
      ValueError: if the labels or the shards do not match the metadata, or ``read_threads < 0``.
      ImportError: if grain is not installed.
    """
    grain = _import_grain()
    if read_threads < 0:
        raise ValueError(f"read_threads must be >= 0, got {read_threads}.")
    metadata = read_metadata(directory)
    labels = np.load(os.path.join(directory, LABELS_FILE))
    source = grain.sources.ArrayRecordDataSource([os.path.join(directory, shard) for shard in metadata.shards])
    if labels.shape != (metadata.num_examples,) or len(source) != metadata.num_examples:
        raise ValueError(
            f"{directory}: metadata.json says {metadata.num_examples} examples, but {LABELS_FILE} has "
            f"{labels.shape[0]} and the shards {len(source)}; convert the split again."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= metadata.num_classes):
        raise ValueError(f"{directory}: {LABELS_FILE} has labels outside [0, {metadata.num_classes}).")
    labels = labels.astype(np.int32)
    images = StreamedImages(source, labels, metadata.image_shape, read_threads=read_threads)
    return ArrayDataset(images, labels, metadata.num_classes)


def read_ahead(batch_at: Callable[[int], Any], first: int, stop: int, num_threads: int) -> Iterator[Any]:
    """``batch_at(b)`` for ``b`` in ``first .. stop-1``, in that order, up to ``num_threads`` read at once.

    A grain ``MapDataset`` over the batch indices, mapped by ``batch_at`` and iterated with
    ``ReadOptions(num_threads, prefetch_buffer_size=num_threads)``: grain submits the indices to its
    threads in order and returns the results in that order, so the batches do not depend on the
    thread count. ``batch_at`` must be a function of ``b`` alone (thread-safe).
    """
    grain = _import_grain()
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads)
    iterator = iter(grain.MapDataset.range(first, stop).map(batch_at).to_iter_dataset(options))
    try:
        yield from iterator
    finally:
        iterator.close()
