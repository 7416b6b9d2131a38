"""Builds a CIFAR-10-C-style set from the CIFAR-10 (JPEG q75) test set with ``imagecorruptions``.

Hendrycks & Dietterich (2019, arXiv:1903.12261) corrupt the CIFAR-10 test set with 15 corruptions
at 5 severities; their release is not available offline here. This command rebuilds the same
layout from the CIFAR-10 (JPEG) archive (``load_dataset("cifar10_jpeg", "test")``)::

    pip install -e '.[corruptions]'
    python -m sam_jax.data.make_cifar10_c --data_dir ../shared/data --out /data/cifar10_c_jpeg

which writes ``<out>/CIFAR-10-C/<corruption>.npy`` (uint8 ``[5 * N, 32, 32, 3]``, severity ``s``
in rows ``(s - 1) * N .. s * N``), ``labels.npy`` (``[5 * N]``), the layout that
``load_dataset("cifar10_corrupted", "<corruption>_<severity>", data_dir=<out>)`` reads, plus
``indices.npy`` (the test-set positions used) and ``provenance.json``.

**This is not the released CIFAR-10-C.** The ``imagecorruptions`` package (Michaelis et al. 2019,
arXiv:1907.07484; the maintained fork ``imagecorruptions-imaug``) implements the corruptions with
the severity parameters of **ImageNet-C** (written for 224 x 224 images), not the CIFAR-specific
ones of the CIFAR-10-C release, and it offers no way to pass other parameters; the source images
are the JPEG q75 re-encoding, not the original CIFAR-10 pixels. ``provenance.json`` says so, and
results on this set must be labelled "CIFAR-10-C (JPEG source, ImageNet-C severities)".

Every image is corrupted with its own random state, seeded from ``(seed, corruption, severity,
test-set position)``, so a subset (``--limit``, ``--corruptions``) holds the same corrupted images
as the full set.
"""

import importlib.metadata
import inspect
import json
import os
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from sam_jax.data.catalog import CIFAR10_CORRUPTIONS, CIFAR10_SEVERITIES
from sam_jax.data.sources import load_dataset

FOLDER = "CIFAR-10-C"
PROVENANCE = "provenance.json"
# The 15 benchmark corruptions of Hendrycks & Dietterich (2019); the release's 4 extra ones follow them.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = CIFAR10_CORRUPTIONS[:15]
LABEL = "CIFAR-10-C (JPEG source, ImageNet-C severities)"


def _imagecorruptions():
    """The ``imagecorruptions`` module; ``ImportError`` naming the extra when it is absent."""
    try:
        import imagecorruptions
    except ImportError as err:
        raise ImportError(
            "make_cifar10_c needs the imagecorruptions package: pip install -e '.[corruptions]' "
            "(imagecorruptions-imaug, the maintained fork that runs with NumPy 2 and scikit-image >= 0.19)."
        ) from err
    return imagecorruptions


def _package_version() -> str:
    for distribution in ("imagecorruptions-imaug", "imagecorruptions"):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "imagecorruptions (version unknown)"


def _image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """A 31-bit seed of one corrupted image (NumPy's legacy and Numba's generators take it)."""
    state = np.random.SeedSequence([seed, CIFAR10_CORRUPTIONS.index(corruption), severity, index])
    return int(state.generate_state(1)[0] >> 1)


def corrupt_images(
    images: np.ndarray, indices: np.ndarray, corruption: str, severity: int, *, seed: int = 0
) -> np.ndarray:
    """One corruption at one severity of every image, each from its own seeded random state.

    Args:
      images: uint8 ``[N, 32, 32, 3]``.
      indices: ``[N]`` positions of the images in the test set (they seed the randomness).
      corruption: a name of :data:`CIFAR10_CORRUPTIONS`.
      severity: 1 .. 5 (``imagecorruptions``' ImageNet-C parameters).
      seed: the base seed.

    Returns:
      uint8 ``[N, 32, 32, 3]``.
    """
    package = _imagecorruptions()
    # Most corruptions draw from NumPy's global generator; the fork's glass blur (Numba) and impulse
    # noise (scikit-image) take a seed of their own.
    takes_seed = "seed" in inspect.signature(package.corruption_dict[corruption]).parameters
    out = np.empty_like(images)
    for row, (image, index) in enumerate(zip(images, indices)):
        image_seed = _image_seed(seed, corruption, severity, int(index))
        np.random.seed(image_seed)
        kwargs = {"seed": image_seed} if takes_seed else {}
        out[row] = package.corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
    return out


def _save(path: str, array: np.ndarray) -> None:
    """``np.save`` to a temporary name, then a rename: a killed run leaves no half-written file."""
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(temporary, path)


def make_cifar10_c(
    out: str,
    *,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    corruptions: Sequence[str] = BENCHMARK_CORRUPTIONS,
    limit: int = 0,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Writes ``<out>/CIFAR-10-C/`` from the CIFAR-10 (JPEG) test set (see the module docstring).

    Args:
      out: the data root to write into (``load_dataset(..., data_dir=out)`` then finds the set).
      data_dir: where ``load_dataset("cifar10_jpeg", "test")`` looks first (e.g. ``../shared/data``).
      cache_dir: where the decoded archive is cached (``load_dataset``'s).
      corruptions: names of :data:`CIFAR10_CORRUPTIONS`; default the 15 benchmark ones.
      limit: > 0 keeps that many test images, the first ones of a permutation seeded by ``seed``
        (in test-set order), so that every class appears; 0 keeps all 10,000.
      seed: seeds the subset and every image's corruption.
      overwrite: replace files in a folder this command wrote before; a folder without its
        ``provenance.json`` (e.g. the released CIFAR-10-C) is never written into.

    Returns:
      The provenance record written to ``provenance.json`` (with ``seconds`` per corruption).

    Raises:
      ValueError: for an unknown corruption, a negative limit, or an existing folder.
      ImportError: when ``imagecorruptions`` is not installed.
    """
    unknown = [c for c in corruptions if c not in CIFAR10_CORRUPTIONS]
    if unknown or not corruptions:
        raise ValueError(f"--corruptions {list(corruptions)}: choose among {list(CIFAR10_CORRUPTIONS)}.")
    if limit < 0:
        raise ValueError(f"--limit={limit} must be >= 0 (0 = the whole test set).")
    _imagecorruptions()  # fail before decoding the archive when the package is missing
    folder = os.path.join(out, FOLDER)
    if os.path.isdir(folder) and os.listdir(folder):
        if not os.path.isfile(os.path.join(folder, PROVENANCE)):
            raise ValueError(f"{folder} exists and was not written by make_cifar10_c (no {PROVENANCE}); refusing.")
        if not overwrite:
            raise ValueError(f"{folder} exists; pass --overwrite to replace it.")
    test = load_dataset("cifar10_jpeg", "test", data_dir=data_dir or None, cache_dir=cache_dir or None)
    indices = np.arange(len(test.labels))
    if limit:
        indices = np.sort(np.random.default_rng(seed).permutation(indices)[:limit])
    images, labels = np.asarray(test.images)[indices], np.asarray(test.labels)[indices]
    os.makedirs(folder, exist_ok=True)
    num_severities = len(CIFAR10_SEVERITIES)
    seconds = {}
    for corruption in corruptions:
        start = time.perf_counter()
        stacked = np.concatenate(
            [corrupt_images(images, indices, corruption, s, seed=seed) for s in CIFAR10_SEVERITIES]
        )
        _save(os.path.join(folder, f"{corruption}.npy"), stacked)
        seconds[corruption] = time.perf_counter() - start
    _save(os.path.join(folder, "labels.npy"), np.tile(labels.astype(np.int64), num_severities))
    _save(os.path.join(folder, "indices.npy"), indices.astype(np.int64))
    provenance = {
        "label": LABEL,
        "source": "load_dataset('cifar10_jpeg', 'test'): the CIFAR-10 test set re-encoded as JPEG q75",
        "corruption_package": _package_version(),
        "severity_parameters": "ImageNet-C's, as hard-coded in the package (not CIFAR-10-C's)",
        "corruptions": list(corruptions),
        "severities": list(CIFAR10_SEVERITIES),
        "num_images": int(len(indices)),
        "seed": seed,
        "seconds": seconds,
    }
    with open(os.path.join(folder, PROVENANCE), "w") as f:
        json.dump(provenance, f, indent=2)
    return provenance


def main(argv: Sequence[str]) -> None:
    del argv
    options = flags.FLAGS
    record = make_cifar10_c(
        options.out,
        data_dir=options.data_dir,
        cache_dir=options.cache_dir,
        corruptions=options.corruptions,
        limit=options.limit,
        seed=options.seed,
        overwrite=options.overwrite,
    )
    total = sum(record["seconds"].values())
    print(
        f"Wrote {len(record['corruptions'])} corruptions x {len(record['severities'])} severities x "
        f"{record['num_images']} images to {os.path.join(options.out, FOLDER)} in {total:.1f} s "
        f"({record['label']}; {record['corruption_package']})."
    )


def _define_flags() -> None:
    """Defined only when run as a script, so that importing the module defines no flags."""
    flags.DEFINE_string("out", None, f"Data root to write <out>/{FOLDER}/ into.")
    flags.DEFINE_string("data_dir", "", "Where the CIFAR-10 (JPEG) archive is looked for first.")
    flags.DEFINE_string("cache_dir", "", "Cache of decoded archives ('' = $SAM_JAX_CACHE_DIR or ~/.cache/sam_jax).")
    flags.DEFINE_list("corruptions", list(BENCHMARK_CORRUPTIONS), "Corruptions to write (default: the 15).")
    flags.DEFINE_integer("limit", 0, "Test images kept (a seeded subset; 0 = all 10,000).")
    flags.DEFINE_integer("seed", 0, "Seeds the subset and every image's corruption.")
    flags.DEFINE_bool("overwrite", False, f"Replace a {FOLDER}/ this command wrote before.")
    flags.mark_flags_as_required(["out"])


if __name__ == "__main__":
    _define_flags()
    app.run(main)
