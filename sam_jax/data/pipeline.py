"""Deterministic epochs of training batches and fixed-shape evaluation batches.

Batches are ``{"image": [B, H, W, C], "label": [B] int32}`` dicts of NumPy arrays (see
docs/architecture.md), gathered from an :class:`ArrayDataset`; put them on the device with
:func:`sam_jax.data.prefetch_to_device`. Batch ``b`` is a function of its index alone, gathered by
NumPy indexing from the in-memory arrays, or, for a split streamed from ArrayRecord files
(:class:`sam_jax.data.StreamedImages`), read from the files by grain threads a few batches ahead,
in the same order (:func:`sam_jax.data.streamed.read_ahead`).
"""

from collections.abc import Callable, Iterator

import numpy as np

from sam_jax.data.dataset import ArrayDataset
from sam_jax.data.streamed import StreamedImages, read_ahead

Batch = dict[str, np.ndarray]


def _batches(ds: ArrayDataset, batch_at: Callable[[int], Batch], first: int, stop: int) -> Iterator[Batch]:
    """``batch_at(b)`` for ``b`` in ``first .. stop-1``; read ahead in threads when ``ds`` is streamed."""
    if isinstance(ds.images, StreamedImages):
        return read_ahead(batch_at, first, stop, ds.images.read_threads)
    return map(batch_at, range(first, stop))


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in one epoch, a function of ``(seed, epoch)`` only.

    Seeding a generator with the pair (rather than drawing epochs one after another from one
    generator) makes epoch ``e`` reproducible without replaying epochs ``0 .. e-1``, so a run
    resumed from a checkpoint sees the same order as an uninterrupted one.

    Args:
      num_examples: ``N``.
      seed: non-negative run seed.
      epoch: non-negative epoch index.

    Returns:
      ``[N]`` int64 permutation of ``0 .. N-1``.

    Raises:
      ValueError: if ``seed`` or ``epoch`` is negative.
    """
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}.")
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches of ``batch_size`` in ``num_examples``; a partial last one counts unless dropped.

    Raises:
      ValueError: if ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def train_batches(
    ds: ArrayDataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start_batch: int = 0,
    shuffle: bool = True,
    process_rows: np.ndarray | None = None,
) -> Iterator[Batch]:
    """One epoch of full training batches, in the order of :func:`epoch_permutation`.

    The last ``N mod batch_size`` examples of the epoch's order are dropped so that every
    batch has the same shape (one jit trace); a different order each epoch drops different
    ones. Batch ``b`` of an epoch depends only on ``(seed, epoch, b)``, so starting at
    ``start_batch`` yields exactly the batches an uninterrupted epoch yields from there.

    Args:
      ds: the training split (``float32`` images after normalisation, or ``uint8``), in memory or
        streamed from ArrayRecord files (the same batches, read ahead by grain threads).
      batch_size: examples per batch.
      seed: non-negative run seed.
      epoch: non-negative epoch index.
      start_batch: first batch to yield, in ``0 .. num_batches(N, batch_size)``; a resumed run
        passes the number of batches of this epoch it already trained on.
      shuffle: if False, batches follow the stored order (full-batch GD, debugging).
      process_rows: the positions within each batch that this process loads, in increasing order
        (multi-host data parallelism: the rows its devices hold); None for all. Every process
        computes the same order, so together they load exactly the batches one process would.

    Returns:
      An iterator over ``{"image", "label", "index"}`` batches (``len(process_rows)`` examples
      each when given); ``"index"`` holds each example's position in ``ds`` (losses with
      per-example state, e.g. CRL, key on it).

    Raises:
      ValueError: if ``batch_size`` exceeds ``N`` or ``start_batch`` is out of range (raised
        at the call, not at the first ``next``).
    """
    total = num_batches(ds.num_examples, batch_size)
    if total == 0:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {ds.num_examples} training examples; "
            "lower it so that one full batch fits."
        )
    if not 0 <= start_batch <= total:
        raise ValueError(f"start_batch must be in 0..{total} (batches per epoch), got {start_batch}.")
    order = epoch_permutation(ds.num_examples, seed, epoch) if shuffle else None
    positions = np.arange(batch_size) if process_rows is None else np.asarray(process_rows)

    def batch_at(b: int) -> Batch:
        rows = b * batch_size + positions
        if order is not None:
            rows = order[rows]
        return {"image": ds.images[rows], "label": ds.labels[rows], "index": rows.astype(np.int32)}

    return _batches(ds, batch_at, start_batch, total)


def eval_batches(ds: ArrayDataset, batch_size: int, process_rows: np.ndarray | None = None) -> Iterator[Batch]:
    """All examples in stored order, in batches of exactly ``batch_size`` with a ``"mask"``.

    The last batch is padded with zero images and label 0 up to ``batch_size`` so that a
    jitted evaluation step sees one shape; ``"mask"`` (``float32``, 1 real / 0 padding) lets
    metrics ignore the padding (e.g. ``sam_jax.losses`` take ``mask=``).

    Args:
      ds: the split to evaluate.
      batch_size: examples per batch.
      process_rows: the positions within each batch that this process loads (as in
        :func:`train_batches`); None for all.

    Returns:
      An iterator over ``num_batches(N, batch_size, drop_remainder=False)`` batches
      ``{"image", "label", "mask"}``.

    Raises:
      ValueError: if ``batch_size`` is not positive.
    """
    total = num_batches(ds.num_examples, batch_size, drop_remainder=False)
    positions = np.arange(batch_size) if process_rows is None else np.asarray(process_rows)

    def batch_at(b: int) -> Batch:
        rows = b * batch_size + positions
        real = rows < ds.num_examples
        images = np.zeros((len(rows), *ds.images.shape[1:]), ds.images.dtype)
        labels = np.zeros(len(rows), ds.labels.dtype)
        images[real], labels[real] = ds.images[rows[real]], ds.labels[rows[real]]
        return {"image": images, "label": labels, "mask": real.astype(np.float32)}

    return _batches(ds, batch_at, 0, total)
