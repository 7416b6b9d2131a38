"""The one skip gate for tests that need data the repository does not ship.

Every such test is marked with :data:`needs_fashion_mnist` or :func:`needs_archive`, so that a
machine without the data skips the same tests for the same stated reason, and CI (which installs
the data) runs them all.
"""

import os

import pytest

from sam_jax.data import debian


def needs_data(present: bool, what: str) -> pytest.MarkDecorator:
    """Skips the test unless ``present``; the reason names ``what`` is missing and how to get it."""
    return pytest.mark.skipif(not present, reason=f"needs {what}")


needs_fashion_mnist = needs_data(
    debian.debian_fashion_mnist_present(),
    f"Fashion-MNIST in {debian.DEBIAN_FASHION_MNIST_DIR} (apt-get install {debian.DEBIAN_FASHION_MNIST_PACKAGE}; "
    ".ci/run installs it)",
)


def needs_archive(path: str) -> pytest.MarkDecorator:
    """Skips the test unless the data archive ``path`` exists."""
    return needs_data(os.path.isfile(path), f"the data archive {path}")
