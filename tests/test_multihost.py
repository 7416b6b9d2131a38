"""Two processes joined by ``jax.distributed`` train the run that one process with their devices trains.

Each launch is the command of docs/scaling.md: ``python -m experiments.train`` with the
``distributed`` fields, two processes on localhost with two CPU devices each, against one process
with four devices. The two-process run stops at step 6 and is resumed to step 10 (a constant
learning rate makes that the same run), so the test also covers the checkpoints written and read
by both processes. A process that fails or hangs takes the others down with it (a deadline, then
kill), so the test never hangs.
"""

import json
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sam_jax import data
from sam_jax.training import (
    Checkpointer,
    default_config,
    initialize_distributed,
    load_trained,
    read_metrics,
    validate_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join("tests", "configs", "multihost.py")
DEADLINE_S = 300


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _start(tmp_path, workdir: str, num_steps: int, num_processes: int, devices_per_process: int) -> list:
    """Starts ``experiments.train`` in ``num_processes`` processes; returns ``(process, log)`` pairs."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices_per_process}",
        # The resumed launch reuses the executables of the first (same programs, same devices).
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "compilation_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    flags = [f"--config={CONFIG}", f"--config.workdir={workdir}", f"--config.num_steps={num_steps}"]
    if num_processes > 1:
        flags += [
            f"--config.distributed.coordinator_address=localhost:{_free_port()}",
            f"--config.distributed.num_processes={num_processes}",
        ]
    launched = []
    for process_id in range(num_processes):
        log = open(tmp_path / f"{os.path.basename(workdir)}_{num_steps}_{process_id}.log", "w+")
        extra = [f"--config.distributed.process_id={process_id}"] if num_processes > 1 else []
        command = [sys.executable, "-m", "experiments.train", *flags, *extra]
        launched.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    return launched


def _wait(launched: list) -> None:
    """Waits for every process; the first failure or the deadline kills the rest and fails with the logs."""
    procs = [p for p, _ in launched]
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if None not in codes or any(code not in (None, 0) for code in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    report = []
    for p, log in launched:
        log.seek(0)
        report.append(f"--- {' '.join(p.args[3:])} (exit code {p.returncode}):\n{log.read()[-4000:]}")
        log.close()
    if any(p.returncode != 0 for p in procs):
        pytest.fail("a training process failed or timed out:\n" + "\n".join(report))


def _eval_metrics(records: list[dict], step: int) -> dict:
    record = next(r for r in records if r["step"] == step)
    return {k: v for k, v in record.items() if k.split("/")[0] in ("train", "val", "test", "curvature")}


def test_two_processes_match_one_process_with_their_devices(tmp_path):
    one, two = str(tmp_path / "one_process"), str(tmp_path / "two_processes")
    _wait(_start(tmp_path, one, 10, num_processes=1, devices_per_process=4) + _start(tmp_path, two, 6, 2, 2))
    _wait(_start(tmp_path, two, 10, num_processes=2, devices_per_process=2))

    # Process 0 alone wrote the run's files: its config, each record once, the resumed summary.
    with open(os.path.join(two, "config.json")) as f:
        assert json.load(f)["distributed"]["process_id"] == 0
    records_one, records_two = read_metrics(one), read_metrics(two)
    assert [r["step"] for r in records_one] == [0, 10]
    assert [r["step"] for r in records_two] == [0, 6, 10]
    with open(os.path.join(two, "summary.json")) as f:
        summary = json.load(f)
    assert (summary["num_processes"], summary["num_devices"]) == (2, 4)
    assert (summary["resumed_from_step"], summary["total_steps"]) == (6, 10)
    with open(os.path.join(one, "summary.json")) as f:
        reference = json.load(f)
    assert (reference["num_processes"], reference["num_devices"]) == (1, 4)
    assert os.path.exists(os.path.join(two, "sharpness.png"))

    # Evaluation and curvature (gathered from both processes) and the final parameters agree.
    for step in (0, 10):
        expected, got = _eval_metrics(records_one, step), _eval_metrics(records_two, step)
        assert sorted(expected) == sorted(got) and "curvature/hessian_top1" in got
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-6, err_msg=key)
    run, state_one = load_trained(one)
    checkpointer = Checkpointer(two)
    try:
        state_two = checkpointer.restore(run.init_state)
    finally:
        checkpointer.close()
    assert int(state_one.step) == int(state_two.step) == 10
    for a, b in zip(
        jax.tree_util.tree_leaves(state_one.params), jax.tree_util.tree_leaves(state_two.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"num_processes": 2}, r"distributed\.num_processes is set but distributed is off"),
        ({"coordinator_address": "localhost:1234"}, r"needs distributed\.num_processes"),
        ({"coordinator_address": "localhost:1234", "num_processes": 2}, r"needs distributed\.num_processes"),
        ({"auto": True, "num_processes": 2, "process_id": 2}, r"distributed\.process_id=2"),
        ({"auto": True, "local_device_ids": "0,x"}, r"distributed\.local_device_ids"),
    ],
)
def test_bad_distributed_block_fails_with_clear_message(fields, message):
    config = default_config()
    config.distributed.update(fields)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


def test_distributed_is_off_by_default():
    assert initialize_distributed(default_config().distributed) is False
    assert not jax.distributed.is_initialized()


def _assert_parts_make_whole(whole: list, parts: list) -> None:
    for batch, *pieces in zip(whole, *parts, strict=True):
        for key in batch:
            np.testing.assert_array_equal(np.concatenate([piece[key] for piece in pieces]), batch[key], err_msg=key)


def test_process_rows_of_all_processes_make_the_global_batch():
    rng = np.random.default_rng(0)
    ds = data.ArrayDataset(rng.normal(size=(50, 2, 2, 1)).astype(np.float32), rng.integers(0, 3, 50), 3)
    _assert_parts_make_whole(
        list(data.train_batches(ds, 8, seed=1, epoch=2, start_batch=1)),
        [
            list(data.train_batches(ds, 8, seed=1, epoch=2, start_batch=1, process_rows=rows))
            for rows in np.split(np.arange(8), 2)
        ],
    )
    # The last evaluation batch (2 real examples of 16) is all padding in the second process's half.
    _assert_parts_make_whole(
        list(data.eval_batches(ds, 16)),
        [list(data.eval_batches(ds, 16, process_rows=rows)) for rows in np.split(np.arange(16), 2)],
    )
