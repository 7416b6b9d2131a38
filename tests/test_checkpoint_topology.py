"""Checkpoints across device counts, and with the train state's buffers donated.

One process with 8 forced CPU devices trains 6 SAM steps (checkpoints at 3 and 6) twice, without
and with donation of the state (the loop's ``donate_state``: each checkpoint is followed by a step
that donates the state just saved), and saves its final state sharded along the leading axis. A
process with 2 devices restores both checkpoints and resumes the run from step 3; the test process
(1 device) restores them too. The device count is fixed when JAX starts, hence the subprocesses (as
in ``tests/test_multidevice.py``); one of each serves all the checks.
"""

import json
import os
import subprocess
import sys
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sam_jax.data import ArrayDataset
from sam_jax.training import Checkpointer, RunData, TrainState, build_run, load_run_data
from tests.test_training import digits_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 6
SAVE_EVERY = 3
SPLITS = ("train", "val", "test")
FIELDS = ("images", "labels")


def topology_config(workdir: str) -> ml_collections.ConfigDict:
    """SAM on the digits MLP, 6 steps, a checkpoint at steps 3 and 6, one evaluation at the end."""
    return digits_config(
        workdir,
        **{
            "data.val_size": 0,
            "optimizer.name": "sam",
            "num_steps": NUM_STEPS,
            "checkpoint_every_steps": SAVE_EVERY,
            "log_every_steps": SAVE_EVERY,
            "eval_every_steps": NUM_STEPS,
            "eval_at_start": False,
        },
    )


def shard_leading_axis(tree: Any, mesh: Mesh) -> Any:
    """Each leaf of ``tree`` split along its first axis over ``mesh`` when that divides, else replicated."""

    def sharding(leaf: Any) -> NamedSharding:
        split = np.ndim(leaf) > 0 and np.shape(leaf)[0] % mesh.size == 0
        return NamedSharding(mesh, PartitionSpec("data") if split else PartitionSpec())

    return jax.device_put(tree, jax.tree.map(sharding, tree))


def save_run_data(run_data: RunData, path: str) -> None:
    """Writes the splits of ``run_data`` to ``path`` (``.npz``)."""
    splits = {f"{name}_{field}": getattr(getattr(run_data, name), field) for name in SPLITS for field in FIELDS}
    np.savez(path, num_classes=run_data.num_classes, **splits)


def saved_run_data(path: str) -> RunData:
    """The splits written by :func:`save_run_data` (already standardised: no normalizer).

    The subprocesses read them instead of loading the digits, which would import scikit-learn.
    """
    with np.load(path) as arrays:
        num_classes = int(arrays["num_classes"])
        splits = [ArrayDataset(*(arrays[f"{name}_{field}"] for field in FIELDS), num_classes) for name in SPLITS]
    return RunData(*splits, num_classes, None)


def host_leaves(tree: Any) -> dict[str, np.ndarray]:
    """``{keypath: NumPy array}`` of every leaf, for ``np.savez``."""
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def restore_step(directory: str, target: TrainState, step: int) -> TrainState:
    """The checkpoint of ``step`` under ``<directory>/checkpoints``, restored into ``target``."""
    checkpointer = Checkpointer(directory)
    try:
        return checkpointer.restore(target, step)
    finally:
        checkpointer.close()


def shardings_match(restored: Any, target: Any) -> bool:
    """Whether every leaf of ``restored`` has the sharding of the same leaf of ``target``."""
    return all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(target)))


_PRELUDE = """
import dataclasses, json, os, shutil, sys, warnings
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
sys.path.insert(0, {root!r})
from sam_jax.training import Checkpointer, Hook, build_run, train_and_evaluate
from tests.test_checkpoint_topology import host_leaves, restore_step, shard_leading_axis, shardings_match
from tests.test_checkpoint_topology import saved_run_data, topology_config
out = {out!r}
run_data = saved_run_data(os.path.join(out, "data.npz"))
"""

# 8 devices: the run, its states at steps 3 and 6 (hooks); the same run with the state donated
# (its checkpoints); the final state sharded.
_TRAIN = """
config = topology_config(os.path.join(out, "run"))
config.donate_state = False
run = build_run(config, run_data)
states = {{}}
keep = Hook(3, lambda s: states.update({{int(s.step): jax.device_get(s)}}) or {{}})
train_and_evaluate(config, hooks=[keep], run=run)
for step, state in states.items():
    np.savez(os.path.join(out, f"eight_step{{step}}.npz"), **host_leaves(state))
donated = topology_config(os.path.join(out, "donated"))
assert donated.donate_state  # the loop's default
with warnings.catch_warnings():
    warnings.simplefilter("error")  # e.g. JAX's "Some donated buffers were not usable"
    train_and_evaluate(donated, run=dataclasses.replace(run, config=donated))
for step in (3, 6):
    restored = restore_step(os.path.join(out, "donated"), run.init_state, step)
    np.savez(os.path.join(out, f"donated_step{{step}}.npz"), **host_leaves(restored))
checkpointer = Checkpointer(os.path.join(out, "sharded"))
checkpointer.save(shard_leading_axis(states[6], Mesh(np.array(jax.devices()), ("data",))))
checkpointer.close()
print(json.dumps({{
    "devices": jax.device_count(),
    "initial_state_readable": not any(leaf.is_deleted() for leaf in jax.tree.leaves(run.init_state)),
}}))
"""

# 2 devices: restore both checkpoints, then resume a copy of the run from step 3.
_RESUME = """
config = topology_config(os.path.join(out, "resumed"))
run = build_run(config, run_data)
target = run.init_state
replicated = restore_step(os.path.join(out, "run"), target, 3)
np.savez(os.path.join(out, "two_restored_step3.npz"), **host_leaves(replicated))
sharded_target = shard_leading_axis(target, Mesh(np.array(jax.devices()), ("data",)))
sharded = restore_step(os.path.join(out, "sharded"), sharded_target, 6)
np.savez(os.path.join(out, "two_restored_sharded.npz"), **host_leaves(sharded))
shutil.copytree(os.path.join(out, "run"), config.workdir)
shutil.rmtree(os.path.join(config.workdir, "checkpoints", "6"))
final = {{}}
summary = train_and_evaluate(config, hooks=[Hook(6, lambda s: final.update(state=jax.device_get(s)) or {{}})], run=run)
np.savez(os.path.join(out, "two_resumed_step6.npz"), **host_leaves(final["state"]))
print(json.dumps({{
    "devices": jax.device_count(),
    "resumed_from_step": summary["resumed_from_step"],
    "replicated_shardings_match": shardings_match(replicated, target),
    "sharded_shardings_match": shardings_match(sharded, sharded_target),
    "sharded_spec": str(sharded.params["Dense_0"]["kernel"].sharding.spec),
}}))
"""


# Beside conftest's fast-compile flag (in XLA_FLAGS), LLVM's expensive passes off too for these tiny
# programs; every comparison of bits is within one process.
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true"


def _run(devices: int, body: str, out: str) -> dict:
    flags = f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices} {_FAST_COMPILE}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    script = (_PRELUDE + body).format(root=ROOT, out=out)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return dict(arrays)


def _assert_equal(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.fixture(scope="module")
def saved_on_eight_then_resumed_on_two(tmp_path_factory) -> tuple[str, dict]:
    """The output directory of both processes, and what the 2-device one reports."""
    out = str(tmp_path_factory.mktemp("topology"))
    save_run_data(load_run_data(topology_config(out)), os.path.join(out, "data.npz"))
    assert _run(8, _TRAIN, out) == {"devices": 8, "initial_state_readable": True}
    return out, _run(2, _RESUME, out)


def test_restores_on_two_devices_with_the_targets_sharding(saved_on_eight_then_resumed_on_two):
    out, two = saved_on_eight_then_resumed_on_two
    assert two["devices"] == 2
    assert two["replicated_shardings_match"] and two["sharded_shardings_match"]
    assert two["sharded_spec"] == str(PartitionSpec("data"))
    _assert_equal(_load(os.path.join(out, "two_restored_step3.npz")), _load(os.path.join(out, "eight_step3.npz")))
    _assert_equal(_load(os.path.join(out, "two_restored_sharded.npz")), _load(os.path.join(out, "eight_step6.npz")))


def test_resumed_on_two_devices_matches_the_uninterrupted_run(saved_on_eight_then_resumed_on_two):
    out, two = saved_on_eight_then_resumed_on_two
    assert two["resumed_from_step"] == SAVE_EVERY
    resumed = _load(os.path.join(out, "two_resumed_step6.npz"))
    uninterrupted = _load(os.path.join(out, "eight_step6.npz"))
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():  # equal up to the order of the all-reduce's sums
        np.testing.assert_allclose(resumed[key], value, rtol=1e-5, atol=1e-7, err_msg=key)


def test_restores_on_one_device(saved_on_eight_then_resumed_on_two):
    out, _ = saved_on_eight_then_resumed_on_two
    run_data = saved_run_data(os.path.join(out, "data.npz"))
    target = build_run(topology_config(os.path.join(out, "unused")), run_data).init_state
    restored = restore_step(os.path.join(out, "run"), target, SAVE_EVERY)
    assert shardings_match(restored, target)
    _assert_equal(host_leaves(restored), _load(os.path.join(out, "eight_step3.npz")))

    # A target without shardings (on the host) restores replicated over this process's devices.
    from_host = restore_step(os.path.join(out, "run"), jax.device_get(target), SAVE_EVERY)
    assert shardings_match(from_host, target)
    chex.assert_trees_all_equal(jax.device_get(from_host), jax.device_get(restored))

    sharded_target = shard_leading_axis(target, Mesh(np.array(jax.devices()), ("data",)))
    sharded = restore_step(os.path.join(out, "sharded"), sharded_target, NUM_STEPS)
    assert shardings_match(sharded, sharded_target)
    _assert_equal(host_leaves(sharded), _load(os.path.join(out, "eight_step6.npz")))


def test_donating_the_state_changes_no_bit(saved_on_eight_then_resumed_on_two):
    out, _ = saved_on_eight_then_resumed_on_two
    for step in (SAVE_EVERY, NUM_STEPS):  # the checkpoint taken before a donating step, and the last
        _assert_equal(
            _load(os.path.join(out, f"donated_step{step}.npz")), _load(os.path.join(out, f"eight_step{step}.npz"))
        )


def test_save_returns_after_the_host_copy(tmp_path):
    # Deleting the arrays is what donating them to the next step does to their device buffers; an
    # Orbax that read them after save returned would fail or write garbage.
    state = TrainState(
        jnp.asarray(3, jnp.int32),
        {"w": jnp.arange(60_000.0).reshape(300, 200), "b": jnp.ones(200)},
        {},
        (jnp.full((300, 200), 0.5),),
        jax.random.PRNGKey(0),
    )
    expected = jax.device_get(state)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    checkpointer = Checkpointer(str(tmp_path))
    try:
        checkpointer.save(state)
        for leaf in jax.tree.leaves(state):
            leaf.delete()
        checkpointer.wait()
        restored = checkpointer.restore(target)
    finally:
        checkpointer.close()
    chex.assert_trees_all_equal(jax.device_get(restored), expected)
