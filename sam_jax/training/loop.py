"""The one train loop every experiment uses: ``train_and_evaluate(config, workdir)``.

Data order and PRNG keys are functions of the step (``sam_jax.data.train_batches`` with the epoch
and the batch index; ``fold_in(rng, step)``), so a run resumed from a checkpoint continues exactly as
an uninterrupted one. Evaluation, curvature tracking and user hooks run every few steps and write to
the same ``metrics.jsonl``.

The loop feeds batches to the step of a :class:`~sam_jax.training.build.Run` (assembled by
``sam_jax.training.build``), calls the :class:`~sam_jax.training.evaluation.Hook` s that are due,
checks the loss and saves checkpoints; what a run is made of, evaluation and sharding live in
their own modules and are re-exported here.
"""

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from sam_jax import data
from sam_jax.training import sharding
from sam_jax.training.build import Run, build_run, check_run_data, load_trained
from sam_jax.training.checkpoint import Checkpointer
from sam_jax.training.distributed import is_primary_process, sync_processes
from sam_jax.training.evaluation import Hook, curvature_hook, evaluate, log_spaced_steps, predict
from sam_jax.training.failures import TrainingDivergedError, disk_full, diverged
from sam_jax.training.hooks import plot_sharpness
from sam_jax.training.optimizers import learning_rate_schedule
from sam_jax.training.preemption import PreemptionWatcher, TrainingPreempted
from sam_jax.training.provenance import provenance
from sam_jax.training.state import TrainState
from sam_jax.training.steps import donating_train_step
from sam_jax.training.stopping import EarlyStop
from sam_jax.training.workdir import check_writable, out_of_space_cause, prepare_workdir, workdir_lock
from sam_jax.training.writers import MetricsWriter, read_metrics

__all__ = [
    "Hook",
    "Run",
    "TrainingDivergedError",
    "build_run",
    "check_run_data",
    "evaluate",
    "load_trained",
    "log_spaced_steps",
    "predict",
    "train_and_evaluate",
]

logger = logging.getLogger(__name__)


def _end_of_epoch_loss_update(run: Run, state: TrainState) -> TrainState:
    """The loss state after ``run.loss.epoch_update`` on its split (e.g. AdaFocal's validation bins)."""
    dataset = run.data.val if run.loss.epoch_split == "validation" else run.data.train
    logits = sharding.replicate(run.mesh, predict(run, state.params, state.model_state, dataset))
    loss_state = run.loss_epoch_update(state.loss_state, logits, sharding.replicate(run.mesh, dataset.labels))
    return state._replace(loss_state=loss_state)


def _mean_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    return {f"train_step/{k}": float(np.mean([r[k] for r in records])) for k in records[0]}


# The checkpoint metadata key of the step metrics not yet averaged into a log record.
_WINDOW = "train_step_window"


def _window_to_json(window: Sequence[Mapping[str, Any]]) -> list[dict[str, list]]:
    """The step metrics of an open log window as ``[dtype, value]`` pairs, exact through JSON."""
    return [{k: [np.asarray(v).dtype.name, np.asarray(v).item()] for k, v in record.items()} for record in window]


def _window_from_json(saved: Sequence[Mapping[str, Sequence[Any]]]) -> list[dict[str, np.ndarray]]:
    return [{k: np.asarray(value, dtype) for k, (dtype, value) in record.items()} for record in saved]


def _check_loss(step: int, metrics: Mapping[str, Any], checkpointer: Checkpointer) -> dict[str, Any]:
    """Host copy of a step's metrics; raises when its loss (at the previous parameters) is not finite."""
    values = jax.device_get(metrics)
    loss = float(values["loss"])
    if not math.isfinite(loss):
        raise diverged(step, f"Training loss is {loss} (at the parameters of step {step - 1})", checkpointer)
    return values


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    hooks: Sequence[Hook] = (),
    run: Run | None = None,
) -> dict[str, Any]:
    """Trains and evaluates one run; writes config, metrics, checkpoints and a summary to ``workdir``.

    A ``workdir`` that already holds a run with the same config (up to the length of training) is
    resumed from its newest good checkpoint; one with a different config is an error unless
    ``config.overwrite`` (see ``sam_jax.training.workdir``). A checkpoint is written only for a
    state whose parameters and optimizer state are finite and whose loss on the step's batch is
    finite, so the last checkpoint kept after a divergence is a good one.

    Args:
      config: the run config (``sam_jax.training.default_config`` plus overrides).
      workdir: output directory (default ``config.workdir``).
      hooks: extra :class:`Hook` s whose metrics join ``metrics.jsonl`` (in a distributed run every
        process calls them, and process 0 writes what they return).
      run: a prebuilt :func:`build_run` (to share loaded data between runs); built when None.

    Several processes (``jax.distributed``, initialized before; ``sam_jax.training.distributed``)
    run it together on a shared ``workdir``: each loads its rows of every batch, all take part in
    every computation and in the checkpoints (Orbax), and process 0 alone writes ``config.json``,
    ``metrics.jsonl``, ``summary.json`` and the figures.

    One process writes a run directory at a time: the run holds ``<workdir>/.lock`` while it trains
    (``sam_jax.training.workdir.workdir_lock``; in a distributed run, process 0 holds it).

    Returns:
      The summary: final evaluation metrics, steps, wall time (on every process).

    Raises:
      WorkdirError: ``workdir`` is not writable or holds a different run (before any training).
      WorkdirBusyError: another live process is training in ``workdir`` (before anything is loaded).
      DiskFullError: a metrics or checkpoint write failed for lack of space; the complete
        checkpoints on disk are kept, and the message names the newest.
      TrainingDivergedError: the loss or the parameters became non-finite (the last good
        checkpoint is kept; its step is in the message and in ``kept_step``).
      TrainingPreempted: SIGTERM or SIGINT arrived; a checkpoint of the step reached was saved.
    """
    workdir = workdir or config.workdir
    check_writable(workdir)  # before the lock, whose file lives there
    with workdir_lock(workdir, active=is_primary_process()):
        try:
            return _train_and_evaluate(config, workdir, hooks, run)
        except Exception as err:  # pylint: disable=broad-except  # re-raised unless the disk is full
            full = out_of_space_cause(err)
            if full is None:
                raise
            raise disk_full(workdir, full) from err


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook], run: Run | None
) -> dict[str, Any]:
    """:func:`train_and_evaluate` once the process holds the run directory."""
    primary = is_primary_process()
    resuming = prepare_workdir(config, workdir, may_delete=primary)
    sync_processes("sam_jax.train_and_evaluate: workdir prepared")  # read by all before anyone writes
    run = run or build_run(config)
    writer = MetricsWriter(workdir, active=primary)
    checkpointer = Checkpointer(workdir)
    try:
        with PreemptionWatcher() as watcher:
            started = time.time()
            start_step, end_step = _train(run, workdir, hooks, writer, checkpointer, watcher, resuming)
    finally:
        checkpointer.close()

    sync_processes("sam_jax.train_and_evaluate: metrics written")
    records = read_metrics(workdir)
    if primary and config.curvature.every > 0:
        plot_sharpness(
            records,
            os.path.join(workdir, "sharpness.png"),
            learning_rate=float(learning_rate_schedule(config, run.total_steps)(0)),
        )
    final = {k: v for r in records if r["step"] == end_step for k, v in r.items()}
    summary = {
        **final,
        "total_steps": end_step,
        "max_steps": run.total_steps,
        "stopped_early": end_step < run.total_steps,
        "wall_time_s": time.time() - started,
        "resumed_from_step": start_step,
        "num_train": len(run.data.train.labels),
        "num_val": len(run.data.val.labels),
        "num_test": len(run.data.test.labels),
        "num_devices": run.mesh.size,
        "num_processes": jax.process_count(),
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind}",
        "host_cpu_count": os.cpu_count(),
        "provenance": provenance(),
    }
    writer.write_summary(summary)
    return summary


def _train(
    run: Run,
    workdir: str,
    hooks: Sequence[Hook],
    writer: MetricsWriter,
    checkpointer: Checkpointer,
    watcher: PreemptionWatcher,
    resuming: bool,
) -> tuple[int, int]:
    """The step loop of :func:`train_and_evaluate`; returns the steps it started from and ended at."""
    config = run.config
    state = run.init_state
    # The step metrics since the last log record: saved with each checkpoint, so that a resumed
    # run logs the averages an uninterrupted one would.
    window: list[dict[str, Any]] = []
    if resuming and checkpointer.all_steps():
        state = checkpointer.restore(state)
        try:
            window = _window_from_json(checkpointer.custom_metadata(int(state.step)).get(_WINDOW, []))
        except Exception as err:  # pylint: disable=broad-except  # a checkpoint from before the window was saved
            logger.warning("No step metrics saved with the checkpoint (%s): the next record averages fewer steps.", err)
        logger.warning("Resumed from step %d in %s.", int(state.step), workdir)
    # The step donates the state's buffers (docs/scaling.md); run.init_state stays readable.
    train_step = donating_train_step(run.train_step) if config.donate_state else run.train_step
    if config.donate_state and state is run.init_state:
        state = jax.tree.map(jnp.copy, state)
    start_step = int(state.step)
    writer.reset(keep_up_to_step=start_step)
    writer.write_config(config)

    eval_every = config.eval_every_steps or run.steps_per_epoch
    log_steps = log_spaced_steps(config.eval_points_per_decade, run.total_steps)
    all_hooks = [Hook(eval_every, lambda s: evaluate(run, s), log_steps), *hooks]
    curvature = curvature_hook(run)
    if curvature is not None:
        all_hooks.append(curvature)

    if start_step == 0 and config.eval_at_start:
        initial: dict[str, Any] = {"epoch": 0.0}
        for hook in all_hooks:
            initial.update(hook.fn(state))
        writer.write(0, initial)

    batch_sharding = sharding.batch_sharding(run.mesh, run.batch_size, train=True)
    rows = sharding.process_rows(batch_sharding, run.batch_size)
    shuffle = not run.optimizer.full_batch
    step, pending, stopped = start_step, None, False
    early_stop = EarlyStop.from_config(config.early_stop)
    # A run interrupted after its early stop (checkpoint saved, summary not yet written) ends there.
    if start_step > 0 and early_stop.replay(r for r in read_metrics(workdir) if r["step"] <= start_step):
        return start_step, start_step
    progress = tqdm(
        total=run.total_steps,
        initial=start_step,
        disable=not config.progress_bar or not is_primary_process(),
        desc=os.path.basename(os.path.normpath(workdir)),
        unit="step",
        dynamic_ncols=True,
    )
    try:
        while step < run.total_steps and not stopped:
            epoch, start_batch = divmod(step, run.steps_per_epoch)
            batches = data.train_batches(
                run.data.train,
                run.batch_size,
                seed=config.seed,
                epoch=epoch,
                start_batch=start_batch,
                shuffle=shuffle,
                process_rows=rows,
            )
            with data.prefetch_to_device(batches, sharding=batch_sharding) as device_batches:
                for batch in device_batches:
                    state, metrics = train_step(state, batch)
                    if pending is not None:  # checked one step late so the host never stalls the device
                        window.append(_check_loss(step, pending, checkpointer))
                    pending, step = metrics, step + 1
                    progress.update(1)
                    if run.loss.epoch_split is not None and step % run.steps_per_epoch == 0:
                        state = _end_of_epoch_loss_update(run, state)
                    preempted = watcher.should_stop(step)
                    last = step == run.total_steps or step == early_stop.horizon_end
                    due = [h for h in all_hooks if h.due(step) or last]
                    save = step % config.checkpoint_every_steps == 0 or last or preempted
                    log = step % config.log_every_steps == 0 or last  # not at a stop: the window is saved
                    if due or save or log:
                        window.append(_check_loss(step, pending, checkpointer))
                        pending = None
                    record = {}
                    if log and window:
                        record.update(_mean_metrics(window), epoch=step / run.steps_per_epoch)
                        progress.set_postfix(loss=f"{record['train_step/loss']:.4f}")
                        window = []
                    for hook in due:
                        record.update(hook.fn(state))
                    if early_stop.update(step, record):
                        # The stopping step is the run's last: every hook reports on it.
                        for hook in all_hooks:
                            if hook not in due:
                                record.update(hook.fn(state))
                        last = save = stopped = True
                    if record:
                        writer.write(step, record)
                    if save:
                        if not bool(run.state_is_good(state, batch)):
                            raise diverged(
                                step, "Parameters, optimizer state or the loss at them are not finite", checkpointer
                            )
                        checkpointer.save(state, {_WINDOW: _window_to_json(window)})
                    if preempted:
                        checkpointer.wait()
                        raise TrainingPreempted(step, watcher.signal_name or "signal", workdir)
                    if last:
                        break
    finally:
        progress.close()
    return start_step, step
