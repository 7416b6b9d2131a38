"""Image-folder archives (``<top>/{train,test}/<class>/<image>`` in a .tar / .tar.gz) and their cache.

Small archives are written here with Pillow and ``tarfile`` in the layout of the archives in
``../shared/data/`` (a top folder, a README beside the splits, directory entries for every
folder), the bad ones included; the real archives are read when they are present.
"""

import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from sam_jax import data
from sam_jax.data import image_archive
from sam_jax.data.image_archive import ArchiveSpec
from tests.data_gates import needs_archive

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
TOY = ArchiveSpec("toy", height=4, width=5, mode="RGB", num_classes=3)
RNG = np.random.default_rng(7)


def _png(pixels: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, payload: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    if payload is None:
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    else:
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))


def write_archive(path, members: dict[str, bytes | None]) -> str:
    """A tar (gzip'd when ``path`` ends in .gz) holding ``members`` (``None`` = a directory entry)."""
    with tarfile.open(path, "w:gz" if str(path).endswith(".gz") else "w") as archive:
        for name, payload in members.items():
            _add(archive, name, payload)
    return str(path)


def toy_members(spec: ArchiveSpec = TOY, classes=("cat", "ant", "bee"), per_class=None, top="toy"):
    """Members of a valid archive and the pixels each split should decode to, in label order."""
    channels = spec.channels
    members: dict[str, bytes | None] = {f"{top}/": None, f"{top}/README.md": b"not an image"}
    expected = {}
    per_class = per_class or {"train": 3, "test": 2}
    for split, count in per_class.items():
        members[f"{top}/{split}/"] = None
        pixels, labels = [], []
        for label, name in enumerate(sorted(classes)):
            members[f"{top}/{split}/{name}/"] = None
            # Written in reverse file-name order: the reader must sort, not keep the member order.
            files = {}
            for i in range(count):
                files[f"{i:04d}.png"] = RNG.integers(0, 256, (spec.height, spec.width, channels), dtype=np.uint8)
            for file in sorted(files, reverse=True):
                members[f"{top}/{split}/{name}/{file}"] = _png(files[file], spec.mode)
            for file in sorted(files):
                pixels.append(files[file])
                labels.append(label)
        expected[split] = (np.stack(pixels), np.asarray(labels))
    return members, expected


def test_reads_every_split_sorted_by_class_then_file_and_skips_non_images(tmp_path):
    members, expected = toy_members()
    path = write_archive(tmp_path / "toy.tar.gz", members)
    splits = image_archive.decode_image_archive(path, TOY)
    assert set(splits) == {"train", "test"}
    for split, (pixels, labels) in expected.items():
        assert splits[split].images.dtype == np.uint8 and splits[split].labels.dtype == np.int32
        np.testing.assert_array_equal(splits[split].images, pixels)
        np.testing.assert_array_equal(splits[split].labels, labels)  # ant=0, bee=1, cat=2
        assert splits[split].num_classes == 3


def test_grayscale_archive_has_one_channel(tmp_path):
    spec = ArchiveSpec("gray", height=3, width=3, mode="L", num_classes=2)
    members, expected = toy_members(spec, classes=("0", "1"), top="gray")
    path = write_archive(tmp_path / "gray.tar", members)  # uncompressed tar too
    dataset = image_archive.read_image_archive(path, "test", spec, cache_dir=str(tmp_path / "cache"))
    assert dataset.images.shape == (4, 3, 3, 1)
    np.testing.assert_array_equal(dataset.images, expected["test"][0])


def test_second_load_is_served_from_the_cache_and_a_changed_archive_is_decoded_again(tmp_path, monkeypatch):
    members, expected = toy_members()
    path = write_archive(tmp_path / "toy.tar.gz", members)
    cache = str(tmp_path / "cache")
    first = image_archive.read_image_archive(path, "train", TOY, cache_dir=cache)
    calls = []
    real_decode = image_archive.decode_image_archive
    monkeypatch.setattr(image_archive, "decode_image_archive", lambda *a: calls.append(a) or real_decode(*a))
    for split in ("train", "test"):  # both splits were cached by the first load's one pass
        cached = image_archive.read_image_archive(path, split, TOY, cache_dir=cache)
        np.testing.assert_array_equal(cached.images, expected[split][0])
    assert calls == []
    np.testing.assert_array_equal(first.images, expected["train"][0])

    members["toy/train/ant/0000.png"] = _png(np.zeros((4, 5, 3), np.uint8), "RGB")
    write_archive(path, members)
    changed = image_archive.read_image_archive(path, "train", TOY, cache_dir=cache)
    assert len(calls) == 1 and changed.images[0].max() == 0


def test_a_half_written_or_damaged_cache_is_never_used(tmp_path):
    members, expected = toy_members()
    path = write_archive(tmp_path / "toy.tar.gz", members)
    cache = str(tmp_path / "cache")
    image_archive.read_image_archive(path, "train", TOY, cache_dir=cache)
    folder = image_archive._cache_folder(path, cache)
    assert sorted(os.listdir(folder)) == ["test.npz", "train.npz"]  # no temporary file left behind
    with open(os.path.join(folder, "train.npz"), "r+b") as f:
        f.truncate(100)
    with open(os.path.join(folder, ".partial-abc.npz"), "wb") as f:
        f.write(b"a killed writer's leftovers")
    dataset = image_archive.read_image_archive(path, "train", TOY, cache_dir=cache)
    np.testing.assert_array_equal(dataset.images, expected["train"][0])
    again = image_archive._read_cached(os.path.join(folder, "train.npz"), TOY)
    np.testing.assert_array_equal(again.images, expected["train"][0])  # rewritten whole


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    members, _ = toy_members()
    path = write_archive(tmp_path / "toy.tar.gz", members)
    cache = str(tmp_path / "cache")

    def failing_savez(f, **arrays):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_archive.np, "savez", failing_savez)
    dataset = image_archive.read_image_archive(path, "train", TOY, cache_dir=cache)  # still loads
    assert dataset.images.shape == (9, 4, 5, 3)
    assert os.listdir(image_archive._cache_folder(path, cache)) == []


def test_unwritable_cache_dir_still_loads(tmp_path):
    members, _ = toy_members()
    path = write_archive(tmp_path / "toy.tar.gz", members)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    dataset = image_archive.read_image_archive(path, "test", TOY, cache_dir=str(blocker))
    assert dataset.images.shape == (6, 4, 5, 3)


def _bad_archive(tmp_path, case: str) -> str:
    members, _ = toy_members()
    if case == "truncated":
        good = write_archive(tmp_path / "good.tar.gz", members)
        with open(good, "rb") as f:
            payload = f.read()
        with open(tmp_path / "toy.tar.gz", "wb") as f:
            f.write(payload[: len(payload) // 2])
        return str(tmp_path / "toy.tar.gz")
    if case == "not_an_archive":
        with open(tmp_path / "toy.tar.gz", "wb") as f:
            f.write(RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes())
        return str(tmp_path / "toy.tar.gz")
    if case == "corrupt_image":
        members["toy/train/bee/0001.png"] = b"\x89PNG\r\n\x1a\n broken"
    elif case == "wrong_size":
        members["toy/train/bee/0001.png"] = _png(np.zeros((5, 5, 3), np.uint8), "RGB")
    elif case == "wrong_mode":
        members["toy/test/cat/0000.png"] = _png(np.zeros((4, 5, 1), np.uint8), "L")
    elif case == "empty_class":
        members = {k: v for k, v in members.items() if not k.startswith("toy/test/ant/") or k == "toy/test/ant/"}
    elif case == "class_sets_differ":
        members = {k.replace("toy/test/bee/", "toy/test/bug/"): v for k, v in members.items()}
    elif case == "two_tops":
        members["other/train/ant/0000.png"] = members["toy/train/ant/0000.png"]
    elif case == "wrong_class_count":
        members = {k: v for k, v in members.items() if "/cat/" not in k}
    return write_archive(tmp_path / "toy.tar.gz", members)


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", r"truncated or corrupted"),
        ("not_an_archive", r"truncated or corrupted"),
        ("corrupt_image", r"member toy/train/bee/0001.png is not a readable image"),
        (
            "wrong_size",
            r"member toy/train/bee/0001.png is a 5x5 RGB image; every image of this archive must be 5x4 RGB",
        ),
        ("wrong_mode", r"member toy/test/cat/0000.png is a 5x4 L image"),
        ("empty_class", r"class folder toy/test/ant/ has no images"),
        ("class_sets_differ", r"class folders of toy/test/ differ from those of toy/train/ .*\['bee', 'bug'\]"),
        ("two_tops", r"one top-level folder"),
        ("wrong_class_count", r"has 2 class folders, expected 3"),
    ],
)
def test_bad_archives_are_a_value_error_naming_the_file(tmp_path, case, message):
    path = _bad_archive(tmp_path, case)
    with pytest.raises(ValueError, match=message) as raised:
        image_archive.read_image_archive(path, "train", TOY, cache_dir=str(tmp_path / "cache"))
    assert str(raised.value).startswith(path)
    assert not os.path.exists(tmp_path / "cache" / "image_archives") or not any(
        files for _, _, files in os.walk(tmp_path / "cache")
    )


def _cifar_like_archive(root) -> dict:
    spec = data.ARCHIVES["cifar10_jpeg"]
    classes = [f"class{i}" for i in range(10)]
    members, expected = toy_members(spec, classes=classes, per_class={"train": 2, "test": 1}, top="cifar10-jpeg")
    write_archive(os.path.join(root, "cifar10-jpeg.tar.gz"), members)
    return expected


def test_load_dataset_reads_registered_archives_from_data_dir_and_env(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    expected = _cifar_like_archive(root)
    cache = str(tmp_path / "cache")
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    train = data.load_dataset("cifar10_jpeg", "train", data_dir=str(root), cache_dir=cache)
    assert train.images.shape == (20, 32, 32, 3) and train.num_classes == 10
    np.testing.assert_array_equal(train.images, expected["train"][0])
    monkeypatch.setenv(data.DATA_DIR_ENV, str(root))
    monkeypatch.setenv(image_archive.CACHE_DIR_ENV, cache)
    test = data.load_dataset("cifar10_jpeg", "test")
    np.testing.assert_array_equal(test.labels, np.arange(10))


def test_missing_archive_is_one_file_not_found_error_listing_the_places(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as raised:
        data.load_dataset("cifar10_jpeg", "train", data_dir=str(tmp_path))
    message = str(raised.value)
    assert "data_dir argument: Missing" in message and "cifar10-jpeg" in message
    assert f"${data.DATA_DIR_ENV}: not set" in message and "put cifar10-jpeg.tar.gz" in message


def test_mnist_release_folder_comes_before_the_archive_and_the_archive_is_used_without_it(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    spec = data.ARCHIVES["mnist"]
    members, expected = toy_members(spec, classes=[str(d) for d in range(10)], per_class={"train": 1, "test": 1})
    members = {k.replace("toy", "mnist-png", 1): v for k, v in members.items()}
    write_archive(tmp_path / "mnist-png.tar.gz", members)
    cache = str(tmp_path / "cache")
    train = data.load_dataset("mnist", "train", data_dir=str(tmp_path), cache_dir=cache)
    assert train.images.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(train.images, expected["train"][0])
    with pytest.raises(ValueError, match="mnist"):  # an (empty, corrupt) IDX folder is read first
        (tmp_path / "mnist").mkdir()
        (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00")
        (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(b"\x00")
        data.load_dataset("mnist", "train", data_dir=str(tmp_path), cache_dir=cache)


def test_cifar10_jpeg_is_never_labelled_plain_cifar10():
    assert data.DISPLAY_NAMES["cifar10_jpeg"] == "CIFAR-10 (JPEG q75)"
    assert set(data.DISPLAY_NAMES) == set(data.DATASETS)


# --- the archives of ../shared/data (CI has them) --------------------------------------------------


def _shared_archive(name: str) -> str:
    return os.path.join(SHARED_DATA, data.ARCHIVES[name].stem + ".tar.gz")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("archive_cache"))


@needs_archive(_shared_archive("cifar10_jpeg"))
def test_shared_cifar10_jpeg(shared_cache, monkeypatch):
    train = data.load_dataset("cifar10_jpeg", "train", data_dir=SHARED_DATA, cache_dir=shared_cache)
    assert train.images.shape == (50_000, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
    # The data README's pixel means of the 50,000 train images.
    np.testing.assert_allclose(train.images.mean(axis=(0, 1, 2)) / 255, [0.4913, 0.4821, 0.4465], atol=1e-4)
    monkeypatch.setattr(image_archive, "decode_image_archive", lambda *a: pytest.fail("decoded again"))
    test = data.load_dataset("cifar10_jpeg", "test", data_dir=SHARED_DATA, cache_dir=shared_cache)
    assert test.images.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)


@needs_archive(_shared_archive("mnist"))
def test_shared_mnist(shared_cache, monkeypatch):
    train = data.load_dataset("mnist", "train", data_dir=SHARED_DATA, cache_dir=shared_cache)
    assert train.images.shape == (60_000, 28, 28, 1) and train.images.dtype == np.uint8
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    np.testing.assert_array_equal(np.bincount(train.labels), counts)
    monkeypatch.setattr(image_archive, "decode_image_archive", lambda *a: pytest.fail("decoded again"))
    test = data.load_dataset("mnist", "test", data_dir=SHARED_DATA, cache_dir=shared_cache)
    np.testing.assert_array_equal(np.bincount(test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
