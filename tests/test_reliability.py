"""Reliability: clean exits, good checkpoints, no silent data loss, preemption, loud input errors."""

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from benchmarks.stress_exit import stress
from sam_jax import calibration, data, losses
from sam_jax.data import prefetch
from sam_jax.training import (
    PREEMPTED_EXIT_CODE,
    Checkpointer,
    CheckpointError,
    DiskFullError,
    Hook,
    TrainingDivergedError,
    TrainingPreempted,
    WorkdirBusyError,
    WorkdirError,
    build,
    build_run,
    load_run_data,
    loop,
    preemption,
    read_metrics,
    train_and_evaluate,
    writers,
)
from sam_jax.training.steps import model_forward
from sam_jax.training.workdir import LOCK_FILE
from tests.test_training import digits_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1"}


# ------------------------------------------------------------------ 1. crash-free shutdown


def _diverging_config(workdir: str) -> ml_collections.ConfigDict:
    """A ReLU MLP at learning rate 1e30: its loss is NaN within a few steps."""
    return digits_config(
        workdir,
        **{
            "optimizer.learning_rate": 1e30,
            "optimizer.schedule": "constant",
            "checkpoint_every_steps": 1,
            "model.kwargs": ml_collections.ConfigDict({"widths": (32,), "activation": "relu"}),
        },
    )


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "prefetch_to_device" and t.is_alive()]


def test_prefetcher_thread_is_joined_on_break_exception_and_exit():
    def endless():
        while True:
            yield {"x": np.zeros(3, np.float32)}

    with data.prefetch_to_device(endless(), size=1) as batches:
        next(batches)
    assert not batches.thread_alive  # joined when the block is left early (``break``)

    with pytest.raises(RuntimeError, match="boom"), data.prefetch_to_device(endless(), size=1) as batches:
        next(batches)
        raise RuntimeError("boom")
    assert not batches.thread_alive

    abandoned = data.prefetch_to_device(endless(), size=1)
    next(abandoned)
    assert abandoned.thread_alive
    prefetch._join_abandoned_prefetchers()  # what runs at interpreter exit
    assert not abandoned.thread_alive


def test_exit_with_a_producer_inside_device_put_is_clean():
    """The CI abort, made deterministic: the process exits while the prefetch thread is copying.

    A daemon thread still inside ``jax.device_put`` when Python finalises is killed by a forced
    unwind through XLA's C++ frames: ``FATAL: exception not rethrown``, SIGABRT. An unbounded queue
    keeps the producer copying; the prefetcher is never closed, so only the exit-time join saves it.
    """
    script = (
        "import numpy as np\n"
        "from sam_jax.data import prefetch_to_device\n"
        "source = iter(lambda: {'x': np.ones((64, 784), np.float32)}, None)\n"
        "batches = prefetch_to_device(source, size=10**6)\n"
        "next(batches)\n"
    )
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]


def test_no_background_thread_outlives_the_loop(tmp_path):
    train_and_evaluate(digits_config(str(tmp_path)))
    assert not _prefetch_threads()
    with pytest.raises(TrainingDivergedError):
        train_and_evaluate(_diverging_config(str(tmp_path / "nan")))
    assert not _prefetch_threads()


@pytest.mark.slow  # it keeps both cores busy on purpose; `python -m benchmarks.stress_exit` is the full check
def test_cli_exit_codes_are_zero_under_load():
    """Short version of ``python -m benchmarks.stress_exit`` (which runs 50 and more)."""
    report = stress(runs=2, busy=2, parallel=2)
    assert report["failures"] == 0, json.dumps(report["results"], indent=1)


# ------------------------------------------------------------------ 2. last good checkpoint


def test_kept_checkpoint_after_divergence_is_finite_with_finite_loss(tmp_path):
    # The learning rate jumps by 1e30 at step 20: step 21's parameters are the diverged point.
    # Its parameters are finite (about 1e29) but the ReLU network's logits overflow there.
    config = _diverging_config(str(tmp_path))
    config.optimizer.learning_rate = 0.1
    config.optimizer.schedule = "step"
    config.optimizer.step_boundaries = (0.5,)
    config.optimizer.step_factor = 1e30
    with pytest.raises(TrainingDivergedError) as caught:
        train_and_evaluate(config)
    kept = caught.value.kept_step
    assert kept == 20
    assert f"step {kept}" in str(caught.value)
    run = build_run(config)
    checkpointer = Checkpointer(str(tmp_path))
    try:
        assert checkpointer.latest_step() == kept
        state = checkpointer.restore(run.init_state)
    finally:
        checkpointer.close()
    leaves = jax.tree_util.tree_leaves(state.params)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    for step in (kept, kept + 1):  # the batch that produced it and the next one
        epoch, index = divmod(step - 1, run.steps_per_epoch)
        batch = next(
            data.train_batches(run.data.train, run.batch_size, seed=config.seed, epoch=epoch, start_batch=index)
        )
        logits, _ = model_forward(run.model, state.params, state.model_state, jnp.asarray(batch["image"]), train=False)
        assert np.isfinite(float(losses.cross_entropy(logits, jnp.asarray(batch["label"]))))


# ------------------------------------------------------------------ 3. no silent data loss


def test_reused_workdir_resumes_when_config_matches(tmp_path):
    first = train_and_evaluate(digits_config(str(tmp_path), num_steps=20))
    assert first["resumed_from_step"] == 0
    longer = train_and_evaluate(digits_config(str(tmp_path), num_steps=40))
    assert longer["resumed_from_step"] == 20
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [0, 10, 20, 30, 40]


def test_reused_workdir_with_other_config_is_an_error_and_keeps_the_run(tmp_path):
    train_and_evaluate(digits_config(str(tmp_path), num_steps=20))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(WorkdirError, match=r"optimizer.learning_rate: 0.1 -> 0.2(.|\n)*overwrite=True"):
        train_and_evaluate(digits_config(str(tmp_path), **{"optimizer.learning_rate": 0.2}))
    with pytest.raises(WorkdirError, match="resume=False"):
        train_and_evaluate(digits_config(str(tmp_path), resume=False))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    fresh = train_and_evaluate(digits_config(str(tmp_path), overwrite=True, **{"optimizer.learning_rate": 0.2}))
    assert fresh["resumed_from_step"] == 0


def _truncate_checkpoint(workdir: str, step: int) -> None:
    files = [
        f
        for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**", "*"), recursive=True)
        if os.path.isfile(f)
    ]
    for path in files:  # cut every file in half: a disk that filled up during a copy
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size // 2)


def _truncate_newest_checkpoint(workdir: str) -> int:
    newest = max(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    _truncate_checkpoint(workdir, newest)
    return newest


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    train_and_evaluate(digits_config(str(tmp_path), num_steps=40))
    assert _truncate_newest_checkpoint(str(tmp_path)) == 40
    summary = train_and_evaluate(digits_config(str(tmp_path), num_steps=40))
    assert summary["resumed_from_step"] == 20
    assert "cannot be restored" in caplog.text
    assert summary["test/accuracy"] > 0.5


def test_every_checkpoint_unreadable_is_a_checkpoint_error_listing_each(tmp_path):
    config = digits_config(str(tmp_path), num_steps=40)
    train_and_evaluate(config)
    for step in (20, 40):  # both kept checkpoints
        _truncate_checkpoint(str(tmp_path), step)
    with pytest.raises(CheckpointError, match=r"could be restored:\n  step 40: .*\n  step 20: "):
        train_and_evaluate(config)


@pytest.mark.parametrize(
    "make_workdir",
    [
        lambda tmp: os.path.join(tmp, "a_file", "run"),  # parent is a regular file
        lambda tmp: "/proc/sam_jax_run",  # a file system nobody can create directories in
    ],
)
def test_unwritable_workdir_fails_before_training(tmp_path, make_workdir, monkeypatch):
    (tmp_path / "a_file").write_text("not a directory")

    def must_not_run(*args, **kwargs):
        pytest.fail("data were loaded or a run was built (compiled) for an unwritable workdir")

    # The only ways to data and compiled programs in train_and_evaluate.
    monkeypatch.setattr(loop, "build_run", must_not_run)
    monkeypatch.setattr(build, "load_run_data", must_not_run)
    with pytest.raises(WorkdirError, match="Cannot write to workdir"):
        train_and_evaluate(digits_config(make_workdir(str(tmp_path))))


# ------------------------------------------------------------------ 4. preemption


def test_sigterm_in_process_saves_the_step_and_resumes(tmp_path):
    def send_sigterm(state):
        if int(state.step) == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    workdir = str(tmp_path / "stopped")
    config = digits_config(workdir, num_steps=60, eval_every_steps=30)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingPreempted) as caught:
        train_and_evaluate(config, hooks=[Hook(10, send_sigterm)])
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    stopped = caught.value.step
    assert stopped == 21 and caught.value.signal_name == "SIGTERM"
    checkpointer = Checkpointer(workdir)
    assert checkpointer.latest_step() == stopped
    checkpointer.close()
    # Records up to the last log step (20); step 21's metrics travel in the checkpoint.
    assert read_metrics(workdir)[-1]["step"] == 20
    summary = train_and_evaluate(config)
    assert summary["resumed_from_step"] == stopped and summary["total_steps"] == 60
    # The resumed run's records are an uninterrupted run's, train_step averages included.
    reference = str(tmp_path / "reference")
    train_and_evaluate(digits_config(reference, num_steps=60, eval_every_steps=30))
    assert read_metrics(workdir) == read_metrics(reference)


def test_sigint_in_process_saves_the_step_like_sigterm(tmp_path):
    def send_sigint(state):
        if int(state.step) == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return {}

    config = digits_config(str(tmp_path), num_steps=40)
    with pytest.raises(TrainingPreempted) as caught:
        train_and_evaluate(config, hooks=[Hook(10, send_sigint)])
    assert (caught.value.step, caught.value.signal_name) == (11, "SIGINT")
    assert train_and_evaluate(config)["resumed_from_step"] == 11


def test_a_second_signal_takes_the_previous_action():
    """The first SIGINT only sets the flag; the watcher then puts the previous handler back, so a
    second Ctrl-C interrupts at once (here: the handler installed before the watcher)."""
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with preemption.PreemptionWatcher() as watcher:
            assert not watcher.should_stop(1)
            os.kill(os.getpid(), signal.SIGINT)
            assert watcher.should_stop(2) and watcher.signal_name == "SIGINT" and seen == []
            os.kill(os.getpid(), signal.SIGINT)  # the second one
            assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_several_hosts_stop_at_the_preemption_sync_point(monkeypatch, caplog):
    """With several processes the watcher asks JAX's coordination service (mocked here: the
    sync point is reached at step 7 on every host) and stops at that step; without the service it
    warns once and trains on."""
    monkeypatch.setattr(preemption, "_multi_process", lambda: True)
    monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point", lambda step: step == 7)
    with preemption.PreemptionWatcher() as watcher:
        assert [watcher.should_stop(step) for step in (5, 6, 7)] == [False, False, True]
        assert watcher.signal_name == "SIGTERM"

    def no_service(step):
        raise RuntimeError("preemption sync manager is not initialized")

    monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point", no_service)
    with preemption.PreemptionWatcher() as watcher:
        assert not any(watcher.should_stop(step) for step in range(3))
    assert caplog.text.count("Preemption notices are not handled across hosts") == 1


def _cli(workdir: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={ROOT}/tests/configs/resume.py",
        f"--config.workdir={workdir}",
        *extra,
    ]


def _final_state(workdir: str) -> list[np.ndarray]:
    config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir, "config.json"))))
    checkpointer = Checkpointer(workdir)
    try:
        state = checkpointer.restore(build_run(config).init_state, step=config.num_steps)
    finally:
        checkpointer.close()
    return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.params, state.opt_state))]


@pytest.fixture(scope="module")
def reference_final_state(tmp_path_factory) -> list[np.ndarray]:
    """The final parameters and optimizer state of tests/configs/resume.py, never interrupted."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    done = subprocess.run(_cli(workdir), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return _final_state(workdir)


def _start_and_signal(workdir: str, sig: int) -> subprocess.CompletedProcess:
    """Starts the CLI, sends ``sig`` once its first checkpoint exists, and waits for it."""
    process = subprocess.Popen(
        _cli(workdir), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoints = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(checkpoints) and any(d.isdigit() for d in os.listdir(checkpoints)):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before the signal; make tests/configs/resume.py longer"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _resume_and_compare(workdir: str, reference: list[np.ndarray]) -> None:
    resumed = subprocess.run(_cli(workdir), cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert 0 < summary["resumed_from_step"] < summary["total_steps"], resumed.stdout
    for got, want in zip(_final_state(workdir), reference, strict=True):
        np.testing.assert_array_equal(got, want)


def test_sigterm_on_the_cli_exits_75_and_resumes_bit_identically(tmp_path, reference_final_state):
    workdir = str(tmp_path / "preempted")
    stopped = _start_and_signal(workdir, signal.SIGTERM)
    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-3000:]
    assert "SIGTERM received" in stopped.stderr
    _resume_and_compare(workdir, reference_final_state)


def test_sigkill_then_resume_is_bit_identical(tmp_path, reference_final_state):
    workdir = str(tmp_path / "killed")
    assert _start_and_signal(workdir, signal.SIGKILL).returncode == -signal.SIGKILL
    # The killed run's lock file still names it; a dead holder's lock does not block the resume.
    with open(os.path.join(workdir, LOCK_FILE)) as f:
        assert json.load(f)["pid"] != os.getpid()
    _resume_and_compare(workdir, reference_final_state)


# ------------------------------------------------------------------ 4b. one writer per workdir


def _lock_holder(workdir: str) -> int:
    """The pid written in ``workdir``'s lock file (0 while there is none)."""
    try:
        with open(os.path.join(workdir, LOCK_FILE)) as f:
            return int(json.loads(f.read() or "{}").get("pid", 0))
    except (OSError, ValueError):
        return 0


def test_second_process_on_a_live_workdir_fails_fast_and_the_first_is_unaffected(tmp_path):
    """Two ``python -m experiments.train`` on one workdir: the second exits with 1 within 30 s,
    naming the workdir and the first (its pid); the first trains on and its metrics have each step once."""
    workdir = str(tmp_path / "run")
    command = _cli(workdir, "--config.num_steps=1000000")  # trains until it is stopped below
    first = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        checkpoints = os.path.join(workdir, "checkpoints")
        while time.time() < deadline and first.poll() is None:  # training: its first checkpoint is written
            if (
                _lock_holder(workdir) == first.pid
                and os.path.isdir(checkpoints)
                and any(map(str.isdigit, os.listdir(checkpoints)))
            ):
                break
            time.sleep(0.05)
        assert first.poll() is None, (
            "the first run ended before the second started; make tests/configs/resume.py longer"
        )
        started = time.time()
        second = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        elapsed = time.time() - started
        assert second.returncode == 1, second.stderr[-3000:]
        assert elapsed < 30, elapsed
        assert "WorkdirBusyError" in second.stderr and f"pid {first.pid}" in second.stderr, second.stderr[-3000:]
        assert repr(workdir) in second.stderr and "Traceback" not in second.stderr
        assert first.poll() is None  # still training
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == sorted(set(steps)) and steps[-1] > 0, steps
    assert _lock_holder(workdir) == 0  # released (and cleared) on exit


# A process that takes a workdir's lock, says so, and waits to be killed.
HOLD_LOCK = (
    "import sys, time\n"
    "from sam_jax.training.workdir import workdir_lock\n"
    "with workdir_lock(sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


@pytest.fixture
def lock_held_by_another_process(tmp_path):
    """A workdir whose lock a live subprocess holds; (workdir, that process)."""
    workdir = str(tmp_path / "held")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, workdir], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline() == "held\n"
    yield workdir, holder
    holder.kill()
    holder.wait()


def _must_not_run(*args, **kwargs):
    pytest.fail("data were loaded or a run was built for a workdir another process holds")


def test_busy_workdir_fails_before_anything_is_loaded_and_a_dead_holder_frees_it(
    lock_held_by_another_process, monkeypatch
):
    workdir, holder = lock_held_by_another_process
    config = digits_config(workdir, num_steps=2, eval_every_steps=2, eval_at_start=False)
    with monkeypatch.context() as patched:
        patched.setattr(loop, "build_run", _must_not_run)
        patched.setattr(build, "load_run_data", _must_not_run)
        with pytest.raises(WorkdirBusyError, match=rf"'{workdir}' is in use by pid {holder.pid} on host"):
            train_and_evaluate(config)
    holder.kill()  # SIGKILL: the holder never releases the lock itself
    holder.wait()
    assert _lock_holder(workdir) == holder.pid  # a stale lock file
    assert train_and_evaluate(config)["total_steps"] == 2


def test_grid_job_held_by_another_process_fails_before_it_is_built(lock_held_by_another_process, monkeypatch):
    from experiments import grid

    workdir, holder = lock_held_by_another_process
    job = grid.Job("held", "sgd", digits_config(workdir, num_steps=2))
    monkeypatch.setattr(grid, "build_run", _must_not_run)
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
        grid.run_job(job)
    with grid.claim_job(job) as mine:  # and an exclusive grid process skips it
        assert not mine


# ------------------------------------------------------------------ 4c. a full disk


class _DiskFillsAt:
    """``open`` for ``sam_jax.training.writers``: the write of the metrics record of step ``step``
    puts half its bytes on disk, then fails with ENOSPC, as on a disk that has just filled up."""

    def __init__(self, step: int):
        self.marker = f'{{"step": {step},'

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "a" not in mode:
            return handle
        marker = self.marker

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                handle.close()

            def write(self, text):
                if text.startswith(marker):
                    handle.write(text[: len(text) // 2])
                    handle.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
                return handle.write(text)

        return Full()


def _restorable_steps(config) -> list[int]:
    """The steps of the checkpoints that restore whole and finite."""
    run = build_run(config)
    checkpointer = Checkpointer(config.workdir)
    try:
        good = []
        for step in checkpointer.all_steps():
            checkpointer.restore(run.init_state, step)
            good.append(step)
        return good
    finally:
        checkpointer.close()


def test_full_disk_at_a_metrics_write_keeps_the_checkpoint_says_so_and_resumes(tmp_path, monkeypatch):
    config = digits_config(str(tmp_path), num_steps=40)  # metrics every 10 steps, checkpoints at 20 and 40
    with monkeypatch.context() as patched:
        patched.setattr(writers, "open", _DiskFillsAt(step=30), raising=False)
        with pytest.raises(DiskFullError, match=r"No space left on device.*checkpoint, step 20 .* is kept"):
            train_and_evaluate(config)
    assert _restorable_steps(config) == [20]
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [0, 10, 20]  # the cut line is left out
    summary = train_and_evaluate(config)  # space freed: the same command resumes
    assert summary["resumed_from_step"] == 20
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [0, 10, 20, 30, 40]


def test_full_disk_at_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    save = ocp.CheckpointManager.save

    def save_until_full(manager, step, *args, **kwargs):
        if step == 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(manager.directory, str(step)))
        return save(manager, step, *args, **kwargs)

    config = digits_config(str(tmp_path), num_steps=40)
    with monkeypatch.context() as patched:
        patched.setattr(ocp.CheckpointManager, "save", save_until_full)
        with pytest.raises(DiskFullError, match=r"checkpoint, step 20 .* is kept"):
            train_and_evaluate(config)
    assert _restorable_steps(config) == [20]
    assert train_and_evaluate(config)["resumed_from_step"] == 20


# The train CLI with the metrics write of step 30 failing for lack of space.
FULL_DISK_CLI = (
    "import runpy, sys\n"
    "from sam_jax.training import writers\n"
    "from tests.test_reliability import _DiskFillsAt\n"
    "writers.open = _DiskFillsAt(step=30)\n"
    "sys.argv = ['train'] + sys.argv[1:]\n"
    "runpy.run_module('experiments.train', run_name='__main__')\n"
)


def test_full_disk_on_the_cli_exits_non_zero_with_the_message(tmp_path):
    workdir = str(tmp_path / "run")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL_DISK_CLI,
            *_cli(workdir)[3:],
            "--config.num_steps=40",
            "--config.log_every_steps=10",
            "--config.checkpoint_every_steps=20",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "DiskFullError: Out of disk space" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "checkpoint, step 20" in done.stderr


# ------------------------------------------------------------------ 5. inputs that are wrong


@pytest.mark.parametrize("bad", [10, -1])
def test_losses_reject_labels_out_of_range(bad):
    logits = jnp.zeros((4, 10))
    labels = jnp.array([0, 1, bad, 2])
    for name in ("cross_entropy", "mse"):
        with pytest.raises(ValueError, match=f"label {bad} at index 2"):
            losses.get_loss(name)(logits, labels)
    with pytest.raises(ValueError, match=f"label {bad}"):
        losses.csam_loss(logits, labels, 1.0)


@pytest.mark.parametrize("metric", [calibration.ece, calibration.brier, calibration.nll, calibration.classwise_ece])
def test_calibration_metrics_reject_bad_labels_and_non_distributions(metric):
    probs = jnp.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="label 3 at index 1"):
        metric(probs, jnp.array([0, 3, 1, 2]))
    with pytest.raises(ValueError, match="label -2"):
        metric(probs, jnp.array([0, 1, -2, 2]))
    labels = jnp.array([0, 1, 1, 2])
    for rows, message in (
        (probs.at[2, 0].set(-0.1).at[2, 1].set(0.1 + 2 / 3), "negative"),
        (probs.at[1].set(jnp.array([0.5, 0.6, 0.2])), "does not sum to 1"),
        (probs.at[3, 0].set(jnp.nan), "NaN or inf"),
    ):
        with pytest.raises(ValueError, match=message):
            metric(rows, labels)
    masked = jnp.array([0, 1, 7, 2])  # a padded (mask 0) row is not checked
    metric(probs, masked, mask=jnp.array([1.0, 1.0, 0.0, 1.0]))


def test_calibration_summary_rejects_bad_labels():
    with pytest.raises(ValueError, match="label 5"):
        calibration.calibration_metrics(jnp.zeros((3, 4)), jnp.array([0, 5, 1]))


def test_loop_rejects_bad_labels_and_nan_images_at_start(tmp_path):
    config = digits_config(str(tmp_path))
    run_data = load_run_data(config)
    labels = run_data.train.labels.copy()
    labels[7] = 10
    bad_labels = run_data._replace(train=run_data.train._replace(labels=labels))
    with pytest.raises(ValueError, match="train split: label 10 at index 7"):
        build_run(config, bad_labels)
    images = run_data.val.images.copy()
    images[3, 0] = np.nan
    with pytest.raises(ValueError, match="val split: image 3 contains NaN"):
        build_run(config, run_data._replace(val=run_data.val._replace(images=images)))


def test_divergence_message_names_divergence_not_inputs(tmp_path):
    with pytest.raises(TrainingDivergedError, match="diverged.*inputs were checked") as caught:
        train_and_evaluate(_diverging_config(str(tmp_path)))
    assert "last good checkpoint" in str(caught.value).lower() or "No checkpoint" in str(caught.value)
