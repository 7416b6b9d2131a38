"""Image-folder archives: ``<top>/{train,test}/<class>/<image>`` packed in one ``.tar`` / ``.tar.gz``.

Such an archive is read in one sequential pass (a gzip stream cannot seek), every split at once,
and each split is cached as an uncompressed ``.npz`` in a writable cache directory, so that the
first load decodes (seconds) and every later load reads one file (about a second or less).

- Labels: the class folders sorted by name are labels ``0..K-1`` (CIFAR-10's folder names sorted
  are its own label order; MNIST's are the digits). Every split must have the same class folders.
- Order: within a split, examples are sorted by (label, file name), so a load is identical on every
  machine whatever the member order of the archive; draw subsets with a seeded permutation.
- Files that are not images (``README.md``, ``LICENSE``) are skipped; every image must decode to
  the expected size and Pillow mode, else the load fails naming the member.
- Cache: ``<cache_dir>/image_archives/<archive name>-<sha256 prefix>/<split>.npz``, keyed by the
  archive's content, so a changed archive is decoded again. Files are written under a temporary
  name and renamed into place: a killed process never leaves a half-written cache that a later
  load would read. A cache file that does not load is decoded again and rewritten.
"""

import dataclasses
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import zipfile
import zlib

import numpy as np

from sam_jax.data.dataset import ArrayDataset

CACHE_DIR_ENV = "SAM_JAX_CACHE_DIR"
ARCHIVE_SUFFIXES: tuple[str, ...] = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_CACHE_FORMAT = 1  # bump when the cached arrays change meaning
_HASH_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ArchiveSpec:
    """What a registered image-folder archive holds.

    Attributes:
      stem: the archive's file name without suffix (``cifar10-jpeg`` for ``cifar10-jpeg.tar.gz``).
      height: image height in pixels.
      width: image width in pixels.
      mode: the Pillow mode every image must have (``"RGB"`` or ``"L"``).
      splits: the split folders the archive must hold.
      num_classes: the number of class folders each split must hold.
    """

    stem: str
    height: int
    width: int
    mode: str
    splits: tuple[str, ...] = ("train", "test")
    num_classes: int = 10

    @property
    def channels(self) -> int:
        """Channels of the decoded array: 3 for ``RGB``, 1 for ``L``."""
        return {"RGB": 3, "L": 1}[self.mode]


# The archives ``load_dataset`` reads from a data root, by dataset name (the files of ../shared/data/).
ARCHIVES: dict[str, ArchiveSpec] = {
    "cifar10_jpeg": ArchiveSpec("cifar10-jpeg", height=32, width=32, mode="RGB"),
    "mnist": ArchiveSpec("mnist-png", height=28, width=28, mode="L"),
}


def default_cache_dir() -> str:
    """``$SAM_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/sam_jax``, else ``~/.cache/sam_jax``."""
    if os.environ.get(CACHE_DIR_ENV):
        return os.path.expanduser(os.environ[CACHE_DIR_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(os.path.expanduser(xdg), "sam_jax")


def find_archive(folder: str, stem: str) -> str:
    """The path of ``<folder>/<stem><suffix>`` for the first suffix of :data:`ARCHIVE_SUFFIXES` present.

    Raises:
      FileNotFoundError: if none is present.
    """
    for suffix in ARCHIVE_SUFFIXES:
        path = os.path.join(folder, stem + suffix)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"Missing {os.path.join(folder, stem)}{{{','.join(ARCHIVE_SUFFIXES)}}}")


def _archive_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _cache_folder(path: str, cache_dir: str) -> str:
    name = os.path.basename(path)
    return os.path.join(cache_dir, "image_archives", f"{name}-{_archive_digest(path)}-v{_CACHE_FORMAT}")


def _decode(path: str, member: str, payload: bytes, spec: ArchiveSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # pylint: disable=import-outside-toplevel  # slow import

    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.mode != spec.mode or image.size != (spec.width, spec.height):
                raise ValueError(
                    f"{path}: member {member} is a {image.size[0]}x{image.size[1]} {image.mode} image; every "
                    f"image of this archive must be {spec.width}x{spec.height} {spec.mode}."
                )
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: member {member} is not a readable image ({err}).") from err
    return pixels.reshape(spec.height, spec.width, spec.channels)


def _member_parts(path: str, name: str) -> list[str]:
    parts = [part for part in name.split("/") if part and part != "."]
    if any(part == ".." for part in parts):
        raise ValueError(f"{path}: member {name!r} points outside the archive.")
    return parts


def decode_image_archive(path: str, spec: ArchiveSpec) -> dict[str, ArrayDataset]:
    """Reads every split of the image-folder archive at ``path`` (no cache).

    Args:
      path: a ``.tar``, ``.tar.gz`` or ``.tgz`` holding ``<top>/<split>/<class>/<image>``.
      spec: what the archive must hold (image size and mode, splits, number of classes).

    Returns:
      ``{split: ArrayDataset}`` with ``uint8 [N, height, width, channels]`` images and ``int32``
      labels (classes sorted by name), examples sorted by (label, file name).

    Raises:
      ValueError: naming the file (and member) for a corrupt or truncated archive, an image that
        does not decode or has the wrong size or mode, a split or class folder without images,
        class folders that differ between splits, or a class count other than ``spec.num_classes``.
    """
    images: dict[str, dict[str, list[tuple[str, np.ndarray]]]] = {split: {} for split in spec.splits}
    tops: set[str] = set()
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                parts = _member_parts(path, member.name)
                if not parts:
                    continue
                tops.add(parts[0])
                if len(parts) < 2 or parts[1] not in images:
                    continue
                split = images[parts[1]]
                if member.isdir() and len(parts) == 3:
                    split.setdefault(parts[2], [])
                if not member.isfile() or len(parts) != 4 or not parts[3].lower().endswith(IMAGE_SUFFIXES):
                    continue
                payload = archive.extractfile(member).read()
                split.setdefault(parts[2], []).append((parts[3], _decode(path, member.name, payload, spec)))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ValueError(
            f"{path}: the archive is truncated or corrupted ({type(err).__name__}: {err}); delete it and copy it again."
        ) from err
    if len(tops) != 1:
        raise ValueError(f"{path}: expected one top-level folder <top>/{{train,test}}/<class>/, found {sorted(tops)}.")
    top = tops.pop()
    for split, classes in images.items():
        if not classes:
            raise ValueError(f"{path}: has no class folders under {top}/{split}/.")
        empty = sorted(name for name, files in classes.items() if not files)
        if empty:
            raise ValueError(f"{path}: class folder {top}/{split}/{empty[0]}/ has no images.")
    reference_split = spec.splits[0]
    class_names = sorted(images[reference_split])
    for split in spec.splits[1:]:
        if sorted(images[split]) != class_names:
            only_one = sorted(set(images[split]) ^ set(class_names))
            raise ValueError(
                f"{path}: the class folders of {top}/{split}/ differ from those of {top}/{reference_split}/ "
                f"(in one but not the other: {only_one})."
            )
    if len(class_names) != spec.num_classes:
        raise ValueError(f"{path}: has {len(class_names)} class folders, expected {spec.num_classes}.")
    splits = {}
    for split, classes in images.items():
        pixels, labels = [], []
        for label, name in enumerate(class_names):
            for _, image in sorted(classes[name], key=lambda item: item[0]):
                pixels.append(image)
                labels.append(label)
        splits[split] = ArrayDataset(np.stack(pixels), np.asarray(labels, np.int32), spec.num_classes)
    return splits


def _write_atomically(target: str, dataset: ArrayDataset) -> None:
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, images=dataset.images, labels=dataset.labels, num_classes=dataset.num_classes)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a shared cache is read by others
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _read_cached(target: str, spec: ArchiveSpec) -> ArrayDataset | None:
    try:
        with np.load(target) as cached:
            dataset = ArrayDataset(cached["images"], cached["labels"], int(cached["num_classes"]))
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
        return None
    expected = (spec.height, spec.width, spec.channels)
    if dataset.images.shape[1:] != expected or dataset.images.shape[0] != dataset.labels.shape[0]:
        return None
    return dataset


def read_image_archive(path: str, split: str, spec: ArchiveSpec, *, cache_dir: str | None = None) -> ArrayDataset:
    """One split of an image-folder archive, from the cache when it holds it (see the module docstring).

    Args:
      path: the archive.
      split: one of ``spec.splits``.
      spec: what the archive must hold.
      cache_dir: where decoded splits are kept; ``None`` = :func:`default_cache_dir`. If it cannot
        be written, the split is decoded and returned without caching (a warning is logged).

    Returns:
      The split: ``uint8`` images ``[N, height, width, channels]``, ``int32`` labels.

    Raises:
      ValueError: for an unknown split or a bad archive (see :func:`decode_image_archive`).
      FileNotFoundError: if ``path`` does not exist.
    """
    if split not in spec.splits:
        raise ValueError(f"Unknown split {split!r} of {path}; choose one of {list(spec.splits)}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No archive {path}")
    folder = _cache_folder(path, cache_dir or default_cache_dir())
    target = os.path.join(folder, f"{split}.npz")
    if os.path.isfile(target):
        cached = _read_cached(target, spec)
        if cached is not None:
            return cached
    splits = decode_image_archive(path, spec)
    try:
        for name, dataset in splits.items():
            _write_atomically(os.path.join(folder, f"{name}.npz"), dataset)
    except OSError as err:
        logging.warning("Could not cache the decoded %s in %s (%s); the next load decodes it again.", path, folder, err)
    return splits[split]
