"""Shared test set-up: XLA's fast-compile setting, one persistent JAX compilation cache for the
session, and the float64 fixture.

The suite's programs are small and compiled once or a few times each, so compiling dominates its
time: ``--xla_backend_optimization_level=0`` (LLVM's optimisation off; XLA's HLO passes, and so the
numerics, unchanged) cut 22-23 % off the wall time of test_curvature, test_evaluate and
test_wiring_objectives (346 s -> 265 s) and of test_bsam_table1 and test_model_zoo (187 s -> 146 s),
both measured side by side on the 2-core CI machine (2026-12-07). It is set through ``XLA_FLAGS``
before JAX starts, so the subprocesses that tests start inherit it; tests that set flags of their
own append them to it.

Many tests build the same small runs (the digits MLP with SGD or SAM); with a compilation cache
shared by the whole session, including the subprocesses the multi-device and multi-host tests
start (through the environment variable), each distinct program is compiled once. The cache lives
in a fresh temporary directory, so nothing carries over between sessions.
"""

import os
import tempfile

# Added once (dict.fromkeys drops a repeat): the xdist workers inherit the flags and load this file again.
os.environ["XLA_FLAGS"] = " ".join(
    dict.fromkeys([*os.environ.get("XLA_FLAGS", "").split(), "--xla_backend_optimization_level=0"])
)

# Imported after XLA_FLAGS is set, since the backend reads it when it starts.
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
