"""The Debian package ``dataset-fashion-mnist``: where it puts Fashion-MNIST, and installing it.

Loaders only read this folder; installing is left to drivers that opt in by calling
:func:`ensure_debian_fashion_mnist`, since a library should not run a package manager.
"""

import logging
import os
import shutil
import subprocess

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEBIAN_FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_LOG = logging.getLogger(__name__)


def debian_fashion_mnist_present() -> bool:
    """Whether the four gzipped IDX files are in ``DEBIAN_FASHION_MNIST_DIR``."""
    return all(os.path.isfile(os.path.join(DEBIAN_FASHION_MNIST_DIR, name)) for name in DEBIAN_FASHION_MNIST_FILES)


def _apt_get(*args: str) -> bool:
    result = subprocess.run(
        ["apt-get", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        _LOG.warning("apt-get %s failed (%d): %s", " ".join(args), result.returncode, result.stderr[-2000:])
    return result.returncode == 0


def ensure_debian_fashion_mnist() -> bool:
    """Installs ``dataset-fashion-mnist`` with apt when its files are missing and we may.

    Runs ``apt-get install -y dataset-fashion-mnist`` only if the files are absent, ``apt-get``
    exists and the process is root; if the install fails (typically stale package lists), runs
    ``apt-get update`` and tries once more.

    Returns:
      Whether the four files are now in ``DEBIAN_FASHION_MNIST_DIR``.
    """
    if debian_fashion_mnist_present():
        return True
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return False
    install = ("install", "-y", DEBIAN_FASHION_MNIST_PACKAGE)
    if not _apt_get(*install) and _apt_get("update"):
        _apt_get(*install)
    return debian_fashion_mnist_present()
