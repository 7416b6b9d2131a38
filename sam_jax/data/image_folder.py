"""Image files in one folder per class (ImageNet's ``train/<synset>/*.JPEG`` layout), read one at a time.

For converting a dataset too large for memory to ArrayRecord files
(:func:`sam_jax.data.write_array_record` takes the iterator): nothing is held but the current image.
Every image is made ``image_size x image_size`` RGB: its central square (side: the shorter side) is
cropped and resized with Pillow's bicubic filter, which averages over the source pixels when it
shrinks (antialiased), e.g. ``image_size=64`` for a 64x64 ImageNet.
"""

import os
from collections.abc import Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp")


def image_folder_classes(directory: str) -> list[str]:
    """The class names of a folder-per-class split: its subfolders, sorted (label ``i`` is the ``i``-th).

    Raises:
      FileNotFoundError: if ``directory`` does not exist or has no subfolders.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory!r} is not a directory of one folder per class.")
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{directory!r} has no class folders (expected <class>/<image files>).")
    return classes


def _square_image(path: str, image_size: int) -> np.ndarray:
    """The image at ``path`` as ``uint8 [image_size, image_size, 3]``: central square, bicubic resize."""
    from PIL import Image  # pylint: disable=import-outside-toplevel  # Pillow: the streaming extra

    with Image.open(path) as image:
        image = image.convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        return np.asarray(square.resize((image_size, image_size), Image.Resampling.BICUBIC), np.uint8)


def read_image_folder(directory: str, classes: Sequence[str], image_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(image, label)`` for every image file under ``directory/<class>/``, class by class, files sorted.

    Args:
      directory: the split's folder, e.g. ``.../imagenet/train``.
      classes: the class names (label ``i`` is ``classes[i]``), usually :func:`image_folder_classes`
        of the training split, so that every split numbers the classes alike. A class without a
        folder here has no examples in this split.
      image_size: side of the square images produced.

    Returns:
      An iterator over ``(uint8 [image_size, image_size, 3], label)``; files whose extension is not
      one of :data:`IMAGE_EXTENSIONS` (case-insensitive) are skipped.

    Raises:
      ValueError: if ``directory`` has a folder that is not one of ``classes`` (raised at the call),
        or ``image_size`` is not positive.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    unknown = sorted(set(image_folder_classes(directory)) - set(classes))
    if unknown:
        raise ValueError(f"{directory!r} has folders {unknown[:5]} that are not classes of the training split.")

    def examples() -> Iterator[tuple[np.ndarray, int]]:
        for label, name in enumerate(classes):
            folder = os.path.join(directory, name)
            if not os.path.isdir(folder):
                continue
            for file in sorted(os.listdir(folder)):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    yield _square_image(os.path.join(folder, file), image_size), label

    return examples()
