"""Streaming a split from ArrayRecord files: the same examples, batches and order as in memory.

Small random ``uint8`` images are written by the tests; the in-memory ``ArrayDataset`` and the
NumPy batch functions are the reference the streamed split must reproduce exactly.
"""

import dataclasses
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

from sam_jax import data
from sam_jax.data.to_array_record import convert_dataset, convert_image_folder
from sam_jax.training import default_config, load_run_data, validate_config

pytest.importorskip("grain")

NUM_EXAMPLES, IMAGE_SHAPE, NUM_CLASSES = 103, (5, 4, 3), 7
BATCH_SIZE = 10  # 10 full batches per epoch, 3 examples dropped


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[data.ArrayDataset, str]:
    """An in-memory split and the directory it was written to, in 6 shards (5 of 20 records, one of 3)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_EXAMPLES, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, NUM_EXAMPLES).astype(np.int32)
    ds = data.ArrayDataset(images, labels, NUM_CLASSES)
    directory = str(tmp_path_factory.mktemp("array_record") / "train")
    data.write_array_record(ds, directory, name="toy", split="train", examples_per_shard=20)
    return ds, directory


class RecordingSource:
    """Wraps a data source and records every key read."""

    def __init__(self, source):
        self.source, self.keys = source, []

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, keys):
        self.keys.extend(keys)
        return self.source.__getitems__(keys)


def recorded(ds: data.ArrayDataset) -> tuple[data.ArrayDataset, RecordingSource]:
    source = RecordingSource(ds.images.source)
    return ds._replace(images=dataclasses.replace(ds.images, source=source)), source


def assert_batches_equal(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_round_trip_metadata_and_indexing(stored):
    ds, directory = stored
    with open(os.path.join(directory, "metadata.json")) as f:
        saved = json.load(f)
    assert saved["format"] == "sam_jax.array_record" and saved["dtype"] == "uint8"
    assert (saved["num_examples"], saved["image_shape"], saved["num_classes"]) == (103, [5, 4, 3], 7)
    assert len(saved["shards"]) == 6

    streamed = data.open_array_record(directory, read_threads=0)
    images = streamed.images
    assert isinstance(images, data.StreamedImages) and streamed.num_classes == NUM_CLASSES
    assert (images.shape, images.dtype, images.ndim, images.size, len(images)) == (
        ds.images.shape,
        np.uint8,
        4,
        ds.images.size,
        NUM_EXAMPLES,
    )
    np.testing.assert_array_equal(np.asarray(images), ds.images)
    np.testing.assert_array_equal(streamed.labels, ds.labels)
    mask = np.arange(NUM_EXAMPLES) % 3 == 0
    for index in (7, -1, slice(5, 50, 7), slice(None, 2), np.array([102, 0, 19, 20, 20, -3]), mask, np.array([], int)):
        np.testing.assert_array_equal(images[index], ds.images[index])
    for bad in (np.array([103]), np.array([-104]), np.zeros((2, 2), int), mask[:-1], (0, 1)):
        with pytest.raises(IndexError):
            images[bad]


def test_an_iterator_of_examples_writes_the_same_split(stored, tmp_path):
    ds, _ = stored
    examples = ((image, label) for image, label in zip(ds.images, ds.labels))
    data.write_array_record(examples, str(tmp_path), name="toy", split="train", num_classes=7, examples_per_shard=64)
    streamed = data.open_array_record(str(tmp_path))
    np.testing.assert_array_equal(np.asarray(streamed.images), ds.images)
    np.testing.assert_array_equal(streamed.labels, ds.labels)


def test_writer_and_reader_reject_bad_input(stored, tmp_path):
    ds, directory = stored
    write = lambda examples, path, **kw: data.write_array_record(examples, str(path), name="toy", split="train", **kw)
    with pytest.raises(ValueError, match="uint8"):
        write(ds._replace(images=ds.images.astype(np.float32)), tmp_path / "float")
    with pytest.raises(ValueError, match="first one's shape"):
        write([(ds.images[0], 0), (ds.images[1, :4], 0)], tmp_path / "shapes", num_classes=7)
    with pytest.raises(ValueError, match="outside"):
        write([(ds.images[0], 7)], tmp_path / "label", num_classes=7)
    with pytest.raises(ValueError, match="num_classes"):
        write([(ds.images[0], 0)], tmp_path / "classes")
    with pytest.raises(FileExistsError):
        write(ds, directory)
    with pytest.raises(FileNotFoundError, match="to_array_record"):
        data.open_array_record(str(tmp_path / "missing"))

    mismatched = tmp_path / "mismatched"
    shutil.copytree(directory, mismatched)
    np.save(mismatched / "labels.npy", (ds.labels + 1) % NUM_CLASSES)
    with pytest.raises(ValueError, match="labels disagree"):
        data.open_array_record(str(mismatched)).images[:3]
    np.save(mismatched / "labels.npy", ds.labels[:-1])
    with pytest.raises(ValueError, match="102"):
        data.open_array_record(str(mismatched))


@pytest.mark.parametrize("read_threads", [0, 1, 4])
@pytest.mark.parametrize("seed, epoch, shuffle", [(0, 0, True), (5, 3, True), (0, 0, False)])
def test_train_batches_are_the_in_memory_ones_for_any_thread_count(stored, read_threads, seed, epoch, shuffle):
    ds, directory = stored
    streamed = data.open_array_record(directory, read_threads=read_threads)
    kwargs = {"seed": seed, "epoch": epoch, "shuffle": shuffle}
    assert_batches_equal(
        list(data.train_batches(streamed, BATCH_SIZE, **kwargs)), list(data.train_batches(ds, BATCH_SIZE, **kwargs))
    )


@pytest.mark.parametrize("start_batch", [1, 7, 10])
def test_resuming_at_a_batch_gives_the_uninterrupted_tail(stored, start_batch):
    _, directory = stored
    streamed = data.open_array_record(directory, read_threads=2)
    uninterrupted = list(data.train_batches(streamed, BATCH_SIZE, seed=1, epoch=2))
    resumed = list(data.train_batches(streamed, BATCH_SIZE, seed=1, epoch=2, start_batch=start_batch))
    assert_batches_equal(resumed, uninterrupted[start_batch:])


def test_processes_partition_each_batch_and_read_only_their_records(stored):
    ds, directory = stored
    rows = {0: np.arange(0, BATCH_SIZE, 2), 1: np.arange(1, BATCH_SIZE, 2)}  # interleaved, as a mesh may hold them
    full = list(data.train_batches(ds, BATCH_SIZE, seed=3, epoch=1))
    parts, read = {}, {}
    for process, positions in rows.items():
        streamed, source = recorded(data.open_array_record(directory, read_threads=3))
        parts[process] = list(data.train_batches(streamed, BATCH_SIZE, seed=3, epoch=1, process_rows=positions))
        read[process] = sorted(source.keys)
    for b, batch in enumerate(full):
        for key in batch:
            merged = np.empty_like(batch[key])
            for process, positions in rows.items():
                merged[positions] = parts[process][b][key]
            np.testing.assert_array_equal(merged, batch[key])
    for process, positions in rows.items():
        assert read[process] == sorted(np.concatenate([f["index"][positions] for f in full]).tolist())
    assert not set(read[0]) & set(read[1])


def test_eval_batches_are_the_in_memory_ones(stored):
    ds, directory = stored
    streamed = data.open_array_record(directory, read_threads=2)
    assert_batches_equal(list(data.eval_batches(streamed, 25)), list(data.eval_batches(ds, 25)))
    positions = np.array([0, 1, 2, 3, 4])
    assert_batches_equal(
        list(data.eval_batches(streamed, 10, process_rows=positions)),
        list(data.eval_batches(ds, 10, process_rows=positions)),
    )


def test_split_and_standardisation_stay_streamed_and_equal(stored):
    ds, directory = stored
    streamed, source = recorded(data.open_array_record(directory))
    train, val = data.train_val_split(streamed, train_size=60, val_size=30, seed=4)
    assert not source.keys  # a subset reads nothing
    normalizer = data.fit_normalizer(train)
    read_by_fit = len(source.keys)
    val = data.normalize(val, normalizer)
    assert len(source.keys) == read_by_fit and isinstance(val.images, data.StreamedImages)
    assert val.images.dtype == np.float32

    train_ref, val_ref = data.train_val_split(ds, train_size=60, val_size=30, seed=4)
    normalizer_ref = data.fit_normalizer(train_ref)
    np.testing.assert_array_equal(normalizer.mean, normalizer_ref.mean)
    np.testing.assert_array_equal(normalizer.std, normalizer_ref.std)
    np.testing.assert_array_equal(val.labels, val_ref.labels)
    np.testing.assert_array_equal(np.asarray(val.images), data.normalize(val_ref, normalizer_ref).images)


def digits_config(**data_fields) -> ml_collections.ConfigDict:
    config = default_config()
    config.data.name, config.data.val_size = "digits", 200
    config.data.update(data_fields)
    return config


def test_a_converted_dataset_loads_as_the_in_memory_run_data(tmp_path):
    convert_dataset("digits", str(tmp_path), examples_per_shard=500)
    streamed = load_run_data(digits_config(format="array_record", array_record_dir=str(tmp_path), read_threads=2))
    reference = load_run_data(digits_config())
    assert isinstance(streamed.train.images, data.StreamedImages)
    np.testing.assert_array_equal(streamed.normalizer.mean, reference.normalizer.mean)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(np.asarray(getattr(streamed, split).images), getattr(reference, split).images)
        np.testing.assert_array_equal(getattr(streamed, split).labels, getattr(reference, split).labels)
    with pytest.raises(ValueError, match="holds dataset 'digits'"):
        load_run_data(digits_config(name="mnist", format="array_record", array_record_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"format": "parquet"}, "data.format"),
        ({"format": "array_record"}, "data.array_record_dir"),
        ({"format": "array_record", "array_record_dir": "/d", "data_dir": "/x"}, "data.data_dir"),
        ({"format": "array_record", "array_record_dir": "/d", "read_threads": -1}, "data.read_threads"),
        ({"name": "imagenet64"}, "data.name"),
    ],
)
def test_bad_data_source_config_is_rejected(fields, message):
    with pytest.raises(ValueError, match=message):
        validate_config(digits_config(**fields))


def test_a_converted_dataset_may_have_any_name():
    validate_config(digits_config(name="imagenet64", format="array_record", array_record_dir="/d"))


def test_an_image_folder_converts_class_by_class(tmp_path):
    from PIL import Image

    colours = {"cat": [(255, 0, 0), (0, 255, 0)], "dog": [(0, 0, 255)]}
    for split, sizes in (("train", [(6, 4), (4, 4)]), ("test", [(3, 5)])):
        for name, rgbs in colours.items():
            os.makedirs(tmp_path / "root" / split / name)
            for i, (rgb, size) in enumerate(zip(rgbs, sizes)):
                Image.new("RGB", size, rgb).save(tmp_path / "root" / split / name / f"{i}.png")
    (tmp_path / "root" / "train" / "cat" / "notes.txt").write_text("not an image")

    written = convert_image_folder(str(tmp_path / "root"), str(tmp_path / "out"), name="pets", image_size=2)
    assert (written["train"].num_examples, written["test"].num_examples) == (3, 2)
    train = data.open_array_record(str(tmp_path / "out" / "train"))
    np.testing.assert_array_equal(train.labels, [0, 0, 1])
    expected = np.array([rgb for rgbs in colours.values() for rgb in rgbs], np.uint8)
    np.testing.assert_array_equal(np.asarray(train.images), np.broadcast_to(expected[:, None, None], (3, 2, 2, 3)))

    os.makedirs(tmp_path / "root" / "test" / "bird")
    with pytest.raises(ValueError, match="bird"):
        data.read_image_folder(str(tmp_path / "root" / "test"), ["cat", "dog"], 2)
