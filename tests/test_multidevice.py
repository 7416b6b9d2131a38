"""The loop's step has no single-device assumption: 8 CPU devices give the 1-device result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r})
from tests.test_training import digits_config
from sam_jax.training import train_and_evaluate, Checkpointer, build_run
config = digits_config({workdir!r}, **{{"num_steps": 10, **{overrides!r}}})
summary = train_and_evaluate(config)
state = Checkpointer({workdir!r}).restore(build_run(config).init_state)
leaves = [np.asarray(x).ravel().tolist() for x in jax.tree_util.tree_leaves(state.params)]
print(json.dumps({{"devices": jax.device_count(), "leaves": leaves, "loss": summary["train_step/loss"]}}))
"""


def _run(tmp_path, devices: int, overrides: dict) -> dict:
    workdir = str(tmp_path / f"devices{devices}")
    flags = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(root=ROOT, workdir=workdir, overrides=overrides)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer.name": "sam"},
        # VOGN's per-example moments: 8 sub-batches of 8 examples, one per device (``device_vmap``).
        {"optimizer.name": "vogn", "optimizer.vogn.m": 8, "optimizer.vogn.damping": 0.1},
    ],
    ids=["sam", "vogn"],
)
def test_eight_devices_match_one(tmp_path, overrides):
    one, eight = _run(tmp_path, 1, overrides), _run(tmp_path, 8, overrides)
    assert (one["devices"], eight["devices"]) == (1, 8)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    for a, b in zip(one["leaves"], eight["leaves"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
