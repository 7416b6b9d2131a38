"""Shared fixtures: float64 for the tests that compare against NumPy float64 references."""

import jax
import pytest


@pytest.fixture(scope="module")
def float64():
    """Turns ``jax_enable_x64`` on for a test module (``pytestmark = pytest.mark.usefixtures("float64")``)
    and restores the previous value afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
