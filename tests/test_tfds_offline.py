"""The TFDS path end to end, offline: TFDS's own cifar10 builder prepares a tiny CIFAR-10 written in
the archive format it downloads, ``load_dataset`` reads it back and the train loop trains on it.

The archive is a real ``cifar-10-binary.tar.gz`` (``cifar-10-batches-bin/data_batch_{1..5}.bin``,
``test_batch.bin``: one label byte then the 3072 bytes of a 32x32 image, channel by channel, per
record; ``batches.meta.txt``: the class names), put where TFDS looks for already downloaded files.
TFDS verifies it against the size and SHA-256 registered for the URL, which are those of the real
162 MiB archive: the test shows that this tiny one is refused, then registers the tiny archive's own
size and SHA-256 for that URL, as ``register_checksums`` would. Every name lookup fails, so a
download attempt would fail the test.
"""

import hashlib
import io
import os
import socket
import tarfile

import numpy as np
import pytest
import scipy.special

from sam_jax import data
from sam_jax.data import tfds_source
from sam_jax.training import load_trained, predict, train_and_evaluate
from tests.test_training import digits_config

# The tfds extra (pip install -e '.[tfds]'); CI installs it, so these only guard other set-ups.
tfds = pytest.importorskip("tensorflow_datasets")
checksums = pytest.importorskip("tensorflow_datasets.core.download.checksums")
pytest.importorskip("tensorflow")  # the cifar10 builder reads the archive with tf.io.gfile
pytest.importorskip("importlib_resources")  # TFDS imports it to find its builders' registered checksums

CIFAR10_TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_binary_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary version: per image, its label byte, then its R, G and B planes row by row."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes()


def write_cifar10_binary_archive(
    path: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> None:
    """Writes ``cifar-10-binary.tar.gz`` with ``train`` spread over the five batches, ``test`` in one."""
    train_parts = zip(np.array_split(train[0], 5), np.array_split(train[1], 5))
    members = {name: cifar10_binary_records(*part) for name, part in zip(CIFAR10_TRAIN_FILES, train_parts)}
    members["test_batch.bin"] = cifar10_binary_records(*test)
    members["batches.meta.txt"] = ("\n".join(CIFAR10_CLASSES) + "\n\n").encode()
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def as_examples(images: np.ndarray, labels: np.ndarray) -> dict[bytes, int]:
    """Each example keyed by its image bytes: TFDS stores examples in its own (hashed) order."""
    examples = {image.tobytes(): int(label) for image, label in zip(images, labels)}
    assert len(examples) == len(labels), "images must be distinct to compare as a set"
    return examples


@pytest.fixture
def offline_tfds(tmp_path, monkeypatch):
    """An empty TFDS data dir as the only source, with every host name lookup failing."""
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    for proxy in [key for key in os.environ if key.lower().endswith("_proxy")]:
        monkeypatch.delenv(proxy)
    tfds_dir = tmp_path / "tensorflow_datasets"
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))

    def no_network(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, f"no network in this test (looked up {host})")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return tfds_dir


@pytest.fixture
def tiny_cifar10(offline_tfds):
    """12 train and 4 test examples in ``cifar-10-binary.tar.gz``, in the TFDS manual dir."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 10
    test = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), np.array([3, 1, 4, 1])
    (url, url_info), *others = tfds.builder_cls("cifar10").url_infos.items()
    assert not others and url_info.filename == tfds_source.TFDS_DOWNLOADS["cifar10"][0] == "cifar-10-binary.tar.gz"
    archive = os.path.join(tfds_source.manual_dir(str(offline_tfds)), url_info.filename)
    os.makedirs(os.path.dirname(archive))
    write_cifar10_binary_archive(archive, train, test)
    return train, test, url, archive


def test_download_list_matches_the_installed_tfds():
    for name, files in tfds_source.TFDS_DOWNLOADS.items():
        split = "fog_1" if name == "cifar10_corrupted" else "test"
        builder_name = tfds_source.tfds_name_and_split(name, split)[0].split("/")[0]  # without the config
        registered = {info.filename for info in tfds.builder_cls(builder_name).url_infos.values()}
        assert registered == set(files), name


def test_offline_download_fails_at_once_with_the_manual_dir(offline_tfds):
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("cifar100", "train")
    message = str(info.value)
    manual = tfds_source.manual_dir(str(offline_tfds))
    assert "ConnectionError: cannot resolve www.cs.toronto.edu to download" in message, message
    assert f"put cifar-100-binary.tar.gz (what TFDS downloads) in {manual}/" in message, message


def test_tfds_refuses_an_archive_that_is_not_the_registered_one(tiny_cifar10, offline_tfds):
    with pytest.raises(FileNotFoundError, match="NonMatchingChecksumError"):
        data.load_dataset("cifar10", "train")
    assert not (offline_tfds / "cifar10" / "3.0.2" / "dataset_info.json").exists()


def test_tfds_prepares_local_archive_and_the_loop_trains_on_it(tiny_cifar10, offline_tfds, tmp_path, monkeypatch):
    (train_images, train_labels), (test_images, test_labels), url, archive = tiny_cifar10
    with open(archive, "rb") as f:
        payload = f.read()
    tiny_archive = checksums.UrlInfo(
        size=len(payload), checksum=hashlib.sha256(payload).hexdigest(), filename=os.path.basename(archive)
    )
    monkeypatch.setattr(tfds.builder_cls("cifar10"), "url_infos", {url: tiny_archive})

    train = data.load_dataset("cifar10", "train")  # not prepared yet: the download step prepares it
    prepared = offline_tfds / "cifar10" / "3.0.2"
    assert (prepared / "cifar10-train.array_record-00000-of-00001").exists()
    test = data.load_dataset("cifar10", "test")  # now read from the prepared TFDS data dir
    for loaded, images, labels in ((train, train_images, train_labels), (test, test_images, test_labels)):
        assert loaded.images.shape == images.shape and loaded.images.dtype == np.uint8
        assert loaded.labels.dtype == np.int32 and loaded.num_classes == 10
        assert as_examples(loaded.images, loaded.labels) == as_examples(images, labels)

    # Two steps, one evaluation at the end; every evaluated split has 4 examples, so that the
    # calibration metrics compile once.
    config = digits_config(
        str(tmp_path / "run"),
        **{
            "data.name": "cifar10",
            "data.val_size": 4,
            "batch_size": 4,
            "num_steps": 2,
            "eval_at_start": False,
            "eval_every_steps": 2,
            "eval_train_size": 4,
            "eval_batch_size": 4,
            "checkpoint_every_steps": 2,
        },
    )
    summary = train_and_evaluate(config)
    assert summary["total_steps"] == 2
    assert (summary["num_train"], summary["num_val"], summary["num_test"]) == (8, 4, 4)
    # The summary's test accuracy and NLL are those of the saved model on the four TFDS test images.
    run, state = load_trained(str(tmp_path / "run"))
    logits = predict(run, state.params, state.model_state, run.data.test).astype(np.float64)
    log_probs = scipy.special.log_softmax(logits, axis=1)
    labels = run.data.test.labels
    assert summary["test/accuracy"] == np.mean(logits.argmax(1) == labels)
    np.testing.assert_allclose(summary["test/nll"], -np.mean(log_probs[np.arange(len(labels)), labels]), rtol=1e-5)
