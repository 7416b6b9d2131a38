"""The CIFAR-10-C converter on a few CIFAR-10 (JPEG) test images: the layout that
``load_dataset("cifar10_corrupted", ...)`` reads, its labels, seeding and provenance."""

import json
import os

import numpy as np
import pytest

from sam_jax import data
from sam_jax.data.make_cifar10_c import FOLDER, PROVENANCE, make_cifar10_c

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
ARCHIVE = os.path.join(SHARED_DATA, data.ARCHIVES["cifar10_jpeg"].stem + ".tar.gz")

pytestmark = pytest.mark.skipif(not os.path.isfile(ARCHIVE), reason="needs ../shared/data/cifar10-jpeg.tar.gz")

# Two that draw from NumPy's generator and one (impulse noise) that takes its own seed.
CORRUPTIONS = ("gaussian_noise", "impulse_noise", "contrast")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    pytest.importorskip("imagecorruptions")
    out = str(tmp_path_factory.mktemp("cifar10_c"))
    return out, make_cifar10_c(out, data_dir=SHARED_DATA, corruptions=CORRUPTIONS, limit=6, seed=3)


def test_layout_is_what_cifar10_corrupted_reads(written):
    out, record = written
    test = data.load_dataset("cifar10_jpeg", "test", data_dir=SHARED_DATA)
    indices = np.load(os.path.join(out, FOLDER, "indices.npy"))
    assert len(indices) == 6 and len(np.unique(test.labels[indices])) > 1  # a seeded subset, not class 0 only
    for corruption in CORRUPTIONS:
        for severity in (1, 5):
            split = data.load_dataset("cifar10_corrupted", f"{corruption}_{severity}", data_dir=out, download=False)
            assert split.images.shape == (6, 32, 32, 3) and split.images.dtype == np.uint8
            np.testing.assert_array_equal(split.labels, test.labels[indices])
    clean = test.images[indices].astype(int)
    change = [
        np.abs(data.load_dataset("cifar10_corrupted", f"gaussian_noise_{s}", data_dir=out).images - clean).mean()
        for s in (1, 5)
    ]
    assert 0 < change[0] < change[1]  # severity s is block s of the stacked file
    assert record["num_images"] == 6 and record["corruptions"] == list(CORRUPTIONS)
    with open(os.path.join(out, FOLDER, PROVENANCE)) as f:
        assert "ImageNet-C" in json.load(f)["label"]


def test_each_image_is_seeded_on_its_own(written, tmp_path):
    out, _ = written
    smaller = str(tmp_path)
    make_cifar10_c(smaller, data_dir=SHARED_DATA, corruptions=("impulse_noise",), limit=3, seed=3)
    kept = np.load(os.path.join(smaller, FOLDER, "indices.npy"))
    full = np.load(os.path.join(out, FOLDER, "indices.npy"))
    rows = np.searchsorted(full, kept)
    np.testing.assert_array_equal(full[rows], kept)  # a smaller limit keeps a subset of the images
    for severity in (2, 4):
        split = f"impulse_noise_{severity}"
        subset = data.load_dataset("cifar10_corrupted", split, data_dir=smaller).images
        np.testing.assert_array_equal(subset, data.load_dataset("cifar10_corrupted", split, data_dir=out).images[rows])


def test_refuses_a_folder_it_did_not_write_and_unknown_corruptions(tmp_path):
    pytest.importorskip("imagecorruptions")
    os.makedirs(tmp_path / FOLDER)
    (tmp_path / FOLDER / "labels.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="not written by make_cifar10_c"):
        make_cifar10_c(str(tmp_path), data_dir=SHARED_DATA, corruptions=("contrast",), limit=2)
    with pytest.raises(ValueError, match="choose among"):
        make_cifar10_c(str(tmp_path / "new"), corruptions=("rain",), limit=2)
