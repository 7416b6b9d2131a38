"""Splits, standardisation, batching and prefetching of ``sam_jax.data``."""

import threading

import chex
import jax
import numpy as np
import pytest

from sam_jax import data


def indexed_dataset(num_examples: int, shape=(2, 2, 1), num_classes: int = 10) -> data.ArrayDataset:
    """Image ``i`` is filled with ``i``, its label is ``i % num_classes``: pairs stay checkable."""
    images = np.broadcast_to(
        np.arange(num_examples, dtype=np.float32)[:, None, None, None], (num_examples, *shape)
    ).copy()
    return data.ArrayDataset(images, (np.arange(num_examples) % num_classes).astype(np.int32), num_classes)


def example_ids(batch) -> np.ndarray:
    """Ids of the examples of a batch dict or an ``ArrayDataset``, checking labels still match."""
    images, labels = (
        (batch.images, batch.labels) if isinstance(batch, data.ArrayDataset) else (batch["image"], batch["label"])
    )
    ids = np.asarray(images)[:, 0, 0, 0].astype(np.int64)
    np.testing.assert_array_equal(np.asarray(labels), ids % 10)  # image and label still paired
    return ids


# ---------------------------------------------------------------- padding


def test_pad_to_size_centres_the_image_in_zeros():
    images = np.arange(2 * 28 * 27 * 3, dtype=np.uint8).reshape(2, 28, 27, 3) % 250 + 1
    padded = data.pad_to_size(data.ArrayDataset(images, np.array([3, 4]), 10), 32)
    assert padded.images.shape == (2, 32, 32, 3) and padded.images.dtype == np.uint8
    np.testing.assert_array_equal(padded.images[:, 2:30, 2:29], images)  # 4 rows: 2 + 2; 5 columns: 2 + 3
    assert padded.images.sum(dtype=np.int64) == images.sum(dtype=np.int64)
    np.testing.assert_array_equal(padded.labels, [3, 4])
    with pytest.raises(ValueError, match="pad_to=24"):
        data.pad_to_size(data.ArrayDataset(images, np.array([3, 4]), 10), 24)


# ---------------------------------------------------------------- train_val_split


def test_train_val_split_is_a_seeded_disjoint_subset():
    ds = indexed_dataset(50)
    train, val = data.train_val_split(ds, train_size=20, val_size=10, seed=3)
    train_ids, val_ids = example_ids(train), example_ids(val)
    assert (train_ids.size, val_ids.size) == (20, 10)
    assert not set(train_ids) & set(val_ids)
    order = np.random.default_rng(3).permutation(50)
    np.testing.assert_array_equal(train_ids, order[:20])
    np.testing.assert_array_equal(val_ids, order[20:30])
    # The training subset depends only on (seed, train_size), not on the validation size.
    np.testing.assert_array_equal(
        example_ids(data.train_val_split(ds, train_size=20, val_size=0, seed=3)[0]), train_ids
    )
    assert not np.array_equal(example_ids(data.train_val_split(ds, train_size=20, val_size=10, seed=4)[0]), train_ids)


def test_train_val_split_none_keeps_the_rest_and_rejects_too_large_sizes():
    ds = indexed_dataset(50)
    train, val = data.train_val_split(ds, train_size=None, val_size=15, seed=0)
    assert sorted(np.concatenate([example_ids(train), example_ids(val)])) == list(range(50))
    assert (train.num_examples, val.num_examples, train.num_classes) == (35, 15, 10)
    with pytest.raises(ValueError, match=r"train_size \(40\) \+ val_size \(11\) must be at most the 50"):
        data.train_val_split(ds, train_size=40, val_size=11, seed=0)
    with pytest.raises(ValueError, match="val_size >= 0"):
        data.train_val_split(ds, train_size=None, val_size=-1, seed=0)


# ---------------------------------------------------------------- normalisation


def test_normalizer_matches_float64_reference_across_chunks():
    rng = np.random.default_rng(0)
    # More examples than one chunk of the two-pass computation, channels with different stats.
    images = np.clip(rng.normal([40, 128, 220], [10, 60, 20], size=(2500, 3, 2, 3)), 0, 255).astype(np.uint8)
    ds = data.ArrayDataset(images, np.zeros(2500, np.int32), 10)
    normalizer = data.fit_normalizer(ds)
    reference = images.astype(np.float64) / 255.0
    assert normalizer.mean.dtype == np.float32 and normalizer.mean.shape == (3,)
    np.testing.assert_allclose(normalizer.mean, reference.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(normalizer.std, reference.std(axis=(0, 1, 2)), rtol=1e-6)

    standardised = data.normalize(ds, normalizer)
    assert standardised.images.dtype == np.float32
    np.testing.assert_allclose(standardised.images.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardised.images.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    np.testing.assert_array_equal(standardised.labels, ds.labels)


def test_normalize_float_images_without_rescaling_and_bad_inputs():
    images = np.array([[[[1.0]]], [[[3.0]]]], np.float32)
    ds = data.ArrayDataset(images, np.zeros(2, np.int32), 2)
    normalizer = data.fit_normalizer(ds)
    np.testing.assert_allclose(normalizer.mean, [2.0])
    np.testing.assert_allclose(data.normalize(ds, normalizer).images.ravel(), [-1.0, 1.0])
    with pytest.raises(ValueError, match=r"Channels \[0\] are constant"):
        data.fit_normalizer(data.ArrayDataset(np.ones((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32), 2))
    rgb = data.ArrayDataset(np.zeros((2, 1, 1, 3), np.uint8), np.zeros(2, np.int32), 2)
    with pytest.raises(ValueError, match="images have 3 channels"):
        data.normalize(rgb, normalizer)


# ---------------------------------------------------------------- permutations and batches


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    perm = data.epoch_permutation(100, seed=7, epoch=3)
    np.testing.assert_array_equal(np.sort(perm), np.arange(100))
    np.testing.assert_array_equal(perm, data.epoch_permutation(100, seed=7, epoch=3))
    assert not np.array_equal(perm, data.epoch_permutation(100, seed=7, epoch=4))
    assert not np.array_equal(perm, data.epoch_permutation(100, seed=8, epoch=3))
    # (seed, epoch) pairs are distinct streams, not a sum: run 8's epoch 2 is not run 7's epoch 3.
    assert not np.array_equal(perm, data.epoch_permutation(100, seed=8, epoch=2))
    with pytest.raises(ValueError, match="non-negative"):
        data.epoch_permutation(100, seed=-1, epoch=0)


@pytest.mark.parametrize(
    "num_examples, batch_size, drop_remainder, expected",
    [(10, 3, True, 3), (10, 3, False, 4), (9, 3, False, 3), (2, 3, True, 0), (0, 3, False, 0)],
)
def test_num_batches(num_examples, batch_size, drop_remainder, expected):
    assert data.num_batches(num_examples, batch_size, drop_remainder) == expected


def test_train_batches_follow_the_epoch_permutation_and_drop_the_remainder():
    ds = indexed_dataset(23)
    batches = list(data.train_batches(ds, 5, seed=1, epoch=2))
    assert len(batches) == 4
    order = data.epoch_permutation(23, seed=1, epoch=2)
    for b, batch in enumerate(batches):
        chex.assert_shape([batch["image"], batch["label"]], [(5, 2, 2, 1), (5,)])
        assert batch["label"].dtype == np.int32
        np.testing.assert_array_equal(example_ids(batch), order[5 * b : 5 * (b + 1)])
    unshuffled = list(data.train_batches(ds, 5, seed=1, epoch=2, shuffle=False))
    np.testing.assert_array_equal(np.concatenate([example_ids(b) for b in unshuffled]), np.arange(20))


def test_resuming_at_start_batch_gives_the_same_batches():
    ds = indexed_dataset(37)
    full = list(data.train_batches(ds, 4, seed=5, epoch=1))
    for start in (0, 3, 8, 9):
        resumed = list(data.train_batches(ds, 4, seed=5, epoch=1, start_batch=start))
        assert len(resumed) == len(full) - start
        for got, want in zip(resumed, full[start:]):
            chex.assert_trees_all_equal(got, want)


def test_train_batches_rejects_bad_arguments_at_the_call():
    ds = indexed_dataset(10)
    with pytest.raises(ValueError, match="batch_size 11 exceeds the 10"):
        data.train_batches(ds, 11, seed=0, epoch=0)
    with pytest.raises(ValueError, match=r"start_batch must be in 0..3"):
        data.train_batches(ds, 3, seed=0, epoch=0, start_batch=4)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        data.train_batches(ds, 0, seed=0, epoch=0)


def test_eval_batches_pad_the_last_batch_and_mask_it():
    ds = indexed_dataset(10)
    batches = list(data.eval_batches(ds, 4))
    assert len(batches) == 3
    for batch in batches:
        chex.assert_shape([batch["image"], batch["label"], batch["mask"]], [(4, 2, 2, 1), (4,), (4,)])
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batches[-1]["image"][2:], 0)
    np.testing.assert_array_equal(batches[-1]["label"][2:], 0)
    real = np.concatenate([example_ids(b)[b["mask"] > 0] for b in batches])
    np.testing.assert_array_equal(real, np.arange(10))
    assert all(b["mask"].sum() == 4 for b in batches[:-1])
    assert list(data.eval_batches(indexed_dataset(0), 4)) == []


# ---------------------------------------------------------------- prefetch


def test_prefetch_to_device_yields_the_same_batches_on_device():
    ds = indexed_dataset(12)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    expected = list(data.eval_batches(ds, 5))
    got = list(data.prefetch_to_device(data.eval_batches(ds, 5), size=2, sharding=sharding))
    assert len(got) == len(expected)
    for on_device, on_host in zip(got, expected):
        assert isinstance(on_device["image"], jax.Array)
        assert on_device["image"].sharding == sharding
        chex.assert_trees_all_equal(jax.device_get(on_device), on_host)


def test_prefetch_to_device_reraises_errors_and_stops_when_abandoned():
    def failing():
        yield {"x": np.zeros(2)}
        raise RuntimeError("reader broke")

    iterator = data.prefetch_to_device(failing())
    next(iterator)
    with pytest.raises(RuntimeError, match="reader broke"):
        next(iterator)

    def endless():
        while True:
            yield {"x": np.zeros(2)}

    iterator = data.prefetch_to_device(endless(), size=1)
    next(iterator)
    producer = next(t for t in threading.enumerate() if t.name == "prefetch_to_device")
    iterator.close()
    producer.join(timeout=5)
    assert not producer.is_alive()
    with pytest.raises(ValueError, match="at least 1"):
        data.prefetch_to_device(endless(), size=0)
