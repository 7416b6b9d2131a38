"""Shared test set-up: one persistent JAX compilation cache for the session, and the float64 fixture.

Many tests build the same small runs (the digits MLP with SGD or SAM); with a compilation cache
shared by the whole session, including the subprocesses the multi-device and multi-host tests
start (through the environment variable), each distinct program is compiled once. The cache lives
in a fresh temporary directory, so nothing carries over between sessions.
"""

import os
import tempfile

import jax
import pytest

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="sam_jax_tests_jax_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
)


@pytest.fixture(scope="module")
def float64():
    """Turns ``jax_enable_x64`` on for a test module (``pytestmark = pytest.mark.usefixtures("float64")``)
    and restores the previous value afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
