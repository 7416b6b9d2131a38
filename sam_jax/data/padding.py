"""Zero padding of images to a larger square, e.g. Fashion-MNIST's 28x28 to the CIFAR models' 32x32."""

import numpy as np

from sam_jax.data.dataset import ArrayDataset


def pad_to_size(dataset: ArrayDataset, size: int) -> ArrayDataset:
    """``dataset`` with every image zero-padded, centred, to ``size x size`` pixels.

    Padding by ``(size - H) // 2`` before and the rest after each spatial axis keeps the image
    centred, as the LeNet-5 input of LeCun et al. (1998) pads MNIST's 28x28 to 32x32. Pixels keep
    their dtype; standardisation (``sam_jax.data.fit_normalizer``) comes after.

    Args:
      dataset: images ``[N, H, W, C]`` with ``H, W <= size``.
      size: the side of the padded images.

    Returns:
      A dataset with images ``[N, size, size, C]`` and the same labels.

    Raises:
      ValueError: if an image side exceeds ``size``.
    """
    height, width = dataset.images.shape[1:3]
    if height > size or width > size:
        raise ValueError(
            f"data.pad_to={size} is smaller than the images ({height}x{width}); use 0 or >= {max(height, width)}."
        )
    pads = [(0, 0), ((size - height) // 2, size - height - (size - height) // 2)]
    pads += [((size - width) // 2, size - width - (size - width) // 2), (0, 0)]
    return ArrayDataset(np.pad(dataset.images, pads), dataset.labels, dataset.num_classes)
