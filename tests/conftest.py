"""Shared test settings: quiet progress bars, and a float64 fixture for reference comparisons."""
import jax
import pytest


@pytest.fixture
def enable_x64():
    """Runs a test with ``jax_enable_x64`` on, restoring the previous value afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
