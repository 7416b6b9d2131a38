"""Names of the datasets, their classes and splits, and validation of a (name, split) request."""

import re

DATASETS: tuple[str, ...] = (
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar10_jpeg",
    "cifar100",
    "svhn",
    "digits",
    "cifar10_corrupted",
)

NUM_CLASSES: dict[str, int] = {
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar10_jpeg": 10,
    "cifar100": 100,
    "svhn": 10,
    "digits": 10,
    "cifar10_corrupted": 10,
}

# How results on each dataset are labelled in reports and figure titles. CIFAR-10 re-encoded as JPEG
# (quality 75) is not CIFAR-10: its results are never labelled plain "CIFAR-10".
DISPLAY_NAMES: dict[str, str] = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "cifar10_jpeg": "CIFAR-10 (JPEG q75)",
    "cifar100": "CIFAR-100",
    "svhn": "SVHN",
    "digits": "digits (scikit-learn)",
    "cifar10_corrupted": "CIFAR-10-C",
}

# File stems of the CIFAR-10-C release (Hendrycks & Dietterich, 2019): 15 benchmark
# corruptions followed by the 4 extra ones.
CIFAR10_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)
CIFAR10_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

_SPLITS: dict[str, tuple[str, ...]] = {name: ("train", "test") for name in DATASETS}
_SPLITS["svhn"] = ("train", "test", "extra")
_CORRUPTION_SPLIT = re.compile(r"^(?P<corruption>[a-z_]+)_(?P<severity>\d+)$")


def parse_corruption_split(split: str) -> tuple[str, int]:
    """Splits a CIFAR-10-C split name ``"<corruption>_<severity>"`` into its two parts.

    Args:
      split: e.g. ``"gaussian_noise_3"``.

    Returns:
      ``(corruption, severity)``, e.g. ``("gaussian_noise", 3)``.

    Raises:
      ValueError: if the corruption or the severity is not one of the released ones.
    """
    match = _CORRUPTION_SPLIT.match(split)
    if (
        match is None
        or match["corruption"] not in CIFAR10_CORRUPTIONS
        or int(match["severity"]) not in CIFAR10_SEVERITIES
    ):
        raise ValueError(
            f"Unknown cifar10_corrupted split {split!r}: use '<corruption>_<severity>' with "
            f"severity in 1..5 and corruption one of {list(CIFAR10_CORRUPTIONS)}, "
            "e.g. 'gaussian_noise_3'."
        )
    return match["corruption"], int(match["severity"])


def validate_request(name: str, split: str) -> None:
    """Raises ``ValueError`` naming the valid choices when ``name`` or ``split`` is unknown."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {list(DATASETS)}.")
    if name == "cifar10_corrupted":
        parse_corruption_split(split)
    elif split not in _SPLITS[name]:
        raise ValueError(f"Unknown split {split!r} for dataset {name!r}; choose one of {list(_SPLITS[name])}.")
