"""Readers and dataset resolution of ``sam_jax.data``, on small files in the release formats.

Every file is written here the way the official release lays it out (IDX header bytes, CIFAR
Python 2 style pickles of channel-first rows, SVHN's ``[32, 32, 3, N]`` MATLAB arrays with
label 10 for the digit 0, CIFAR-10-C stacked severities), independently of the readers.
"""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import scipy.io

from sam_jax import data
from sam_jax.data import debian, tfds_source
from tests.data_gates import needs_fashion_mnist

RNG = np.random.default_rng(1234)


def random_images(n: int, shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx(path: str, array: np.ndarray, *, compress: bool) -> None:
    type_code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if compress else payload)


def write_idx_split(folder: str, split: str, images: np.ndarray, labels: np.ndarray, *, compress: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}[split]
    suffix = ".gz" if compress else ""
    write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress=compress)
    write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress=compress)


def write_fashion_mnist(folder: str, num_train: int, num_test: int = 3) -> None:
    """Both splits of a Fashion-MNIST-like folder with ``num_train`` training examples."""
    for split, n in (("train", num_train), ("test", num_test)):
        labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
        write_idx_split(folder, split, random_images(n, (28, 28)), labels, compress=True)


def write_cifar_pickle(path: str, images_nhwc: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    rows = images_nhwc.transpose(0, 3, 1, 2).reshape(images_nhwc.shape[0], -1)
    batch = {b"batch_label": b"test batch", label_key: labels.tolist(), b"data": rows}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_svhn_mat(path: str, images_nhwc: np.ndarray, digits: np.ndarray) -> None:
    stored_labels = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
    scipy.io.savemat(path, {"X": images_nhwc.transpose(1, 2, 3, 0), "y": stored_labels})


def truncate(path: str, keep_fraction: float = 0.5) -> None:
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(raw[: int(len(raw) * keep_fraction)])


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrips_uint8_and_big_endian_int32(tmp_path, compress):
    images = random_images(4, (5, 3))
    path = str(tmp_path / "images-idx3-ubyte")
    write_idx(path, images, compress=compress)
    np.testing.assert_array_equal(data.read_idx(path), images)

    counts = np.array([[1, -2], [70000, 3]], dtype=">i4")
    write_idx(path, counts, compress=compress)
    result = data.read_idx(path)
    assert result.dtype == np.int32 and result.dtype.isnative
    np.testing.assert_array_equal(result, counts.astype(np.int64))


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_adds_channel_axis(tmp_path, compress):
    images, labels = random_images(6, (28, 28)), np.array([0, 9, 3, 3, 1, 7], np.uint8)
    write_idx_split(str(tmp_path), "test", images, labels, compress=compress)
    suffix = ".gz" if compress else ""
    ds = data.read_idx_dataset(
        str(tmp_path / f"t10k-images-idx3-ubyte{suffix}"),
        str(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"),
        10,
    )
    assert ds.images.shape == (6, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10
    np.testing.assert_array_equal(ds.images[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_idx_is_a_clear_error(tmp_path, compress):
    path = str(tmp_path / "train-images-idx3-ubyte")
    write_idx(path, random_images(20, (28, 28)), compress=compress)
    truncate(path)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*(gzip|needs).*truncated or corrupted"):
        data.read_idx(path)


def test_idx_with_bad_magic_or_label_mismatch_is_a_clear_error(tmp_path):
    path = str(tmp_path / "not-idx")
    with open(path, "wb") as f:
        f.write(b"<html>404 Not Found</html>")
    with pytest.raises(ValueError, match="not an IDX magic number"):
        data.read_idx(path)

    write_idx(str(tmp_path / "images"), random_images(4, (2, 2)), compress=False)
    write_idx(str(tmp_path / "labels"), np.zeros(3, np.uint8), compress=False)
    with pytest.raises(ValueError, match="expected 4 labels"):
        data.read_idx_dataset(str(tmp_path / "images"), str(tmp_path / "labels"), 10)


# ---------------------------------------------------------------- CIFAR


def test_idx_labels_out_of_range_fail_at_read_time(tmp_path):
    write_idx(str(tmp_path / "images"), random_images(4, (2, 2)), compress=False)
    write_idx(str(tmp_path / "labels"), np.array([0, 3, 10, 1], np.uint8), compress=False)
    with pytest.raises(ValueError, match=r"labels.*\[0, 10\].*outside \[0, 10\)"):
        data.read_idx_dataset(str(tmp_path / "images"), str(tmp_path / "labels"), 10)


def test_cifar10_pickles_concatenate_batches_channel_last(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [(random_images(3, (32, 32, 3)), RNG.integers(0, 10, 3)) for _ in range(5)]
    for i, (images, labels) in enumerate(batches, start=1):
        write_cifar_pickle(str(folder / f"data_batch_{i}"), images, labels, b"labels")
    test_images, test_labels = random_images(2, (32, 32, 3)), np.array([4, 9])
    write_cifar_pickle(str(folder / "test_batch"), test_images, test_labels, b"labels")

    train = data.read_cifar_pickle_dir(str(folder), "train")
    np.testing.assert_array_equal(train.images, np.concatenate([b[0] for b in batches]))
    np.testing.assert_array_equal(train.labels, np.concatenate([b[1] for b in batches]))
    assert train.labels.dtype == np.int32 and train.num_classes == 10
    test = data.read_cifar_pickle_dir(str(folder), "test")
    np.testing.assert_array_equal(test.images, test_images)
    np.testing.assert_array_equal(test.labels, test_labels)


def test_cifar100_uses_fine_labels(tmp_path):
    images = random_images(4, (32, 32, 3))
    fine = np.array([0, 99, 42, 7])
    rows = images.transpose(0, 3, 1, 2).reshape(4, -1)
    with open(tmp_path / "train", "wb") as f:
        pickle.dump(
            {b"data": rows, b"fine_labels": fine.tolist(), b"coarse_labels": [0, 19, 5, 3]},
            f,
            protocol=2,
        )
    ds = data.read_cifar_pickle_dir(str(tmp_path), "train", variant="cifar100")
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, fine)
    assert ds.num_classes == 100


def test_truncated_or_missing_cifar_pickle_is_a_clear_error(tmp_path):
    write_cifar_pickle(str(tmp_path / "test_batch"), random_images(8, (32, 32, 3)), np.arange(8), b"labels")
    truncate(str(tmp_path / "test_batch"))
    with pytest.raises(ValueError, match="test_batch: not a readable CIFAR pickle.*download it again"):
        data.read_cifar_pickle_dir(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="data_batch_1.*data_batch_5"):
        data.read_cifar_pickle_dir(str(tmp_path), "train")


# ---------------------------------------------------------------- SVHN


def test_svhn_mat_maps_label_10_to_digit_0(tmp_path):
    images, digits = random_images(5, (32, 32, 3)), np.array([0, 1, 9, 0, 5])
    path = str(tmp_path / "test_32x32.mat")
    write_svhn_mat(path, images, digits)
    ds = data.read_svhn_mat(path)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, digits)
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10


def test_truncated_svhn_mat_is_a_clear_error(tmp_path):
    path = str(tmp_path / "train_32x32.mat")
    write_svhn_mat(path, random_images(5, (32, 32, 3)), np.arange(5))
    truncate(path)
    with pytest.raises(ValueError, match="train_32x32.mat: not a readable .mat file"):
        data.read_svhn_mat(path)


# ---------------------------------------------------------------- CIFAR-10-C


def write_cifar10_c(folder, corruption: str, per_severity: int) -> tuple[np.ndarray, np.ndarray]:
    os.makedirs(folder, exist_ok=True)
    images = random_images(5 * per_severity, (32, 32, 3))
    labels = np.tile(RNG.integers(0, 10, per_severity), 5).astype(np.uint8)
    np.save(os.path.join(folder, f"{corruption}.npy"), images)
    np.save(os.path.join(folder, "labels.npy"), labels)
    return images, labels


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_cifar10_corrupted_selects_one_severity(tmp_path, severity):
    images, labels = write_cifar10_c(tmp_path, "gaussian_noise", per_severity=4)
    ds = data.read_cifar10_corrupted(str(tmp_path), "gaussian_noise", severity)
    rows = slice(4 * (severity - 1), 4 * severity)
    np.testing.assert_array_equal(ds.images, images[rows])
    np.testing.assert_array_equal(ds.labels, labels[rows])
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10


def test_truncated_cifar10_corrupted_is_a_clear_error(tmp_path):
    write_cifar10_c(tmp_path, "fog", per_severity=4)
    truncate(str(tmp_path / "fog.npy"))
    with pytest.raises(ValueError, match=r"fog.npy: not a readable .npy array"):
        data.read_cifar10_corrupted(str(tmp_path), "fog", 2)
    np.save(tmp_path / "fog.npy", random_images(7, (32, 32, 3)))
    with pytest.raises(ValueError, match=r"fog.npy: expected uint8 images \[5 \* n"):
        data.read_cifar10_corrupted(str(tmp_path), "fog", 2)
    with pytest.raises(ValueError, match="Severity must be one of"):
        data.read_cifar10_corrupted(str(tmp_path), "fog", 6)


# ---------------------------------------------------------------- load_dataset


@pytest.fixture
def no_sources(tmp_path, monkeypatch):
    """No data anywhere: empty env, empty TFDS dir, empty Debian dir, and downloads that fail."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(debian, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian" / "fashion-mnist"))
    real_load_from_tfds = tfds_source.load_from_tfds

    def load_without_network(name, split, *, tfds_dir, download):
        if download:
            raise ConnectionError("no network in tests")
        return real_load_from_tfds(name, split, tfds_dir=tfds_dir, download=download)

    monkeypatch.setattr(tfds_source, "load_from_tfds", load_without_network)
    return tmp_path


def test_load_dataset_reads_every_format_from_data_dir(no_sources):
    root = no_sources / "root"
    write_idx_split(
        str(root / "mnist"),
        "train",
        random_images(3, (28, 28)),
        np.array([1, 2, 3], np.uint8),
        compress=False,
    )
    for folder in ("cifar-10-batches-py", "cifar-100-python", "svhn"):
        (root / folder).mkdir()
    write_cifar_pickle(
        str(root / "cifar-10-batches-py" / "test_batch"),
        random_images(2, (32, 32, 3)),
        np.array([0, 1]),
        b"labels",
    )
    write_cifar_pickle(
        str(root / "cifar-100-python" / "test"),
        random_images(2, (32, 32, 3)),
        np.array([5, 95]),
        b"fine_labels",
    )
    write_svhn_mat(str(root / "svhn" / "extra_32x32.mat"), random_images(2, (32, 32, 3)), np.array([0, 3]))
    write_cifar10_c(root / "CIFAR-10-C", "glass_blur", per_severity=2)

    expected = {
        ("mnist", "train"): (3, 10, (28, 28, 1)),
        ("cifar10", "test"): (2, 10, (32, 32, 3)),
        ("cifar100", "test"): (2, 100, (32, 32, 3)),
        ("svhn", "extra"): (2, 10, (32, 32, 3)),
        ("cifar10_corrupted", "glass_blur_4"): (2, 10, (32, 32, 3)),
    }
    for (name, split), (n, num_classes, shape) in expected.items():
        ds = data.load_dataset(name, split, data_dir=str(root))
        assert (ds.num_examples, ds.num_classes, ds.images.shape[1:]) == (
            n,
            num_classes,
            shape,
        ), name


def test_unknown_name_or_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown dataset 'cifar'.*'cifar10',.*'cifar100'"):
        data.load_dataset("cifar", "train")
    with pytest.raises(ValueError, match=r"Unknown split 'extra' for dataset 'cifar10'.*'train', 'test'"):
        data.load_dataset("cifar10", "extra")
    with pytest.raises(ValueError, match=r"'<corruption>_<severity>'.*gaussian_noise"):
        data.load_dataset("cifar10_corrupted", "gaussian_noise_6")
    with pytest.raises(ValueError, match=r"'<corruption>_<severity>'"):
        data.load_dataset("cifar10_corrupted", "test")


def test_resolution_order_data_dir_then_env_then_tfds_then_debian(no_sources, monkeypatch):
    # Each place holds a different number of training examples, which tells them apart.
    explicit, env = no_sources / "explicit", no_sources / "env"
    write_fashion_mnist(str(explicit / "fashion-mnist"), num_train=5)
    write_fashion_mnist(str(env / "fashion-mnist"), num_train=6)
    write_fashion_mnist(debian.DEBIAN_FASHION_MNIST_DIR, num_train=8)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(env))
    tfds_marker = data.ArrayDataset(np.zeros((7, 28, 28, 1), np.uint8), np.zeros(7, np.int32), 10)
    tfds_calls = []

    def prepared_tfds(name, split, *, tfds_dir, download):
        tfds_calls.append((name, split, tfds_dir, download))
        return tfds_marker

    monkeypatch.setattr(tfds_source, "has_dataset_folder", lambda name, split, tfds_dir: True)
    monkeypatch.setattr(tfds_source, "load_from_tfds", prepared_tfds)

    def num_train(**kwargs):
        return data.load_dataset("fashion_mnist", "train", **kwargs).num_examples

    assert num_train(data_dir=str(explicit)) == 5
    assert num_train() == 6
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert num_train() == 7
    assert tfds_calls == [("fashion_mnist", "train", str(no_sources / "tfds"), False)]
    monkeypatch.setattr(tfds_source, "has_dataset_folder", lambda name, split, tfds_dir: False)
    assert num_train() == 8
    # A data_dir without the dataset's folder is skipped, not an error.
    assert num_train(data_dir=str(no_sources / "empty")) == 8


def test_missing_tfds_dataset_falls_through_to_debian(no_sources):
    # A TFDS dir with a folder but nothing prepared: the real TFDS builder must report it
    # unprepared, and resolution must go on to the Debian files.
    (no_sources / "tfds" / "fashion_mnist").mkdir(parents=True)
    write_fashion_mnist(debian.DEBIAN_FASHION_MNIST_DIR, num_train=8)
    assert data.load_dataset("fashion_mnist", "train").num_examples == 8


def test_tfds_download_is_the_last_resort(no_sources, monkeypatch):
    downloaded = data.ArrayDataset(np.zeros((9, 32, 32, 3), np.uint8), np.zeros(9, np.int32), 10)
    calls = []

    def fake_load_from_tfds(name, split, *, tfds_dir, download):
        calls.append(download)
        return downloaded

    monkeypatch.setattr(tfds_source, "load_from_tfds", fake_load_from_tfds)
    assert data.load_dataset("svhn", "train") is downloaded
    assert calls == [True]
    with pytest.raises(FileNotFoundError, match="not attempted"):
        data.load_dataset("svhn", "train", download=False)
    assert calls == [True]


def test_not_found_error_names_every_place_and_the_fix(no_sources):
    (no_sources / "tfds" / "fashion_mnist").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("fashion_mnist", "test", data_dir=str(no_sources / "mine"))
    message = str(info.value)
    places = [
        f"1. data_dir argument: No folder {no_sources / 'mine' / 'fashion-mnist'}",
        f"2. ${data.DATA_DIR_ENV}: not set",
        f"3. TFDS data dir {no_sources / 'tfds'}: FileNotFoundError",
        f"4. Debian package dataset-fashion-mnist: No folder {debian.DEBIAN_FASHION_MNIST_DIR}",
        "5. TFDS download of 'fashion_mnist'",
        "ConnectionError: no network in tests",
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]",
        "<DIR>/fashion-mnist/ (the release files of github.com/zalandoresearch/fashion-mnist)",
        "sudo apt-get install dataset-fashion-mnist",
    ]
    for place in places:
        assert place in message, (place, message)

    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("cifar10", "train")
    message = str(info.value)
    assert f"TFDS data dir {no_sources / 'tfds'}: has no 'cifar10' folder" in message
    batches = ", ".join(f"data_batch_{i}" for i in range(1, 6))
    assert f"put {batches} in <DIR>/cifar-10-batches-py/" in message
    assert "apt-get" not in message


def test_corrupted_file_in_data_dir_stops_resolution(no_sources):
    folder = no_sources / "root" / "fashion-mnist"
    write_fashion_mnist(str(folder), num_train=4)
    write_fashion_mnist(debian.DEBIAN_FASHION_MNIST_DIR, num_train=8)
    truncate(str(folder / "train-images-idx3-ubyte.gz"))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        data.load_dataset("fashion_mnist", "train", data_dir=str(no_sources / "root"))


def test_tfds_reader_with_mocked_tfds_data(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data makes download_and_prepare a no-op: nothing is downloaded, so no host need resolve.
    monkeypatch.setattr(tfds_source, "_check_download_hosts_resolve", lambda builder, tfds_dir: None)
    assert tfds_source.tfds_name_and_split("cifar10_corrupted", "glass_blur_2") == (
        "cifar10_corrupted/frosted_glass_blur_2",
        "test",
    )
    with tfds.testing.mock_data(num_examples=6):
        for name, split, shape in (
            ("svhn", "extra", (32, 32, 3)),
            ("cifar10_corrupted", "elastic_transform_5", (32, 32, 3)),
            ("mnist", "test", (28, 28, 1)),
        ):
            ds = tfds_source.load_from_tfds(name, split, tfds_dir=str(tmp_path), download=True)
            assert ds.images.shape == (6, *shape) and ds.images.dtype == np.uint8, name
            assert ds.labels.dtype == np.int32 and ds.num_classes == 10, name
            assert ds.labels.min() >= 0 and ds.labels.max() < 10, name


# ---------------------------------------------------------------- digits and Debian


def test_digits_is_a_fixed_80_20_split_of_sklearn_digits():
    from sklearn.datasets import load_digits

    train, test = data.load_dataset("digits", "train"), data.load_dataset("digits", "test")
    assert (train.num_examples, test.num_examples) == (1438, 359)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8 and train.num_classes == 10
    np.testing.assert_array_equal(data.load_dataset("digits", "test").images, test.images)

    reference = load_digits()
    stored = np.concatenate([train.images, test.images])[..., 0].reshape(1797, -1)
    intensities = np.rint(stored.astype(np.float64) * 16 / 255)
    labels = np.concatenate([train.labels, test.labels])

    # Together the two splits are a permutation of scikit-learn's examples, labels attached.
    def examples(pixels, targets):
        return sorted(zip(map(tuple, pixels), targets))

    assert examples(intensities, labels) == examples(reference.data, reference.target)


def test_ensure_debian_fashion_mnist(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    monkeypatch.setattr(debian, "DEBIAN_FASHION_MNIST_DIR", str(folder))
    monkeypatch.setattr(debian.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(debian.os, "geteuid", lambda: 0)
    commands = []

    class Completed:
        def __init__(self, returncode):
            self.returncode, self.stderr = returncode, "E: Unable to locate package"

    def fake_run(command, **kwargs):
        commands.append(command[1])
        if command[1] == "install" and commands.count("update") == 0:
            return Completed(100)  # stale package lists
        if command[1] == "install":
            write_fashion_mnist(str(folder), num_train=2)
        return Completed(0)

    monkeypatch.setattr(debian.subprocess, "run", fake_run)
    assert data.ensure_debian_fashion_mnist()
    assert commands == ["install", "update", "install"]
    assert data.ensure_debian_fashion_mnist()  # present now: nothing runs
    assert commands == ["install", "update", "install"]

    monkeypatch.setattr(debian, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    assert not data.ensure_debian_fashion_mnist()  # not root: never runs apt-get
    assert commands == ["install", "update", "install"]


@needs_fashion_mnist
def test_real_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    train, test = data.load_dataset("fashion_mnist", "train"), data.load_dataset("fashion_mnist", "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert train.num_classes == 10
    # The release is balanced: 6000 training and 1000 test images per class.
    np.testing.assert_array_equal(np.bincount(train.labels), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))
