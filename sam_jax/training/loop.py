"""The one train loop every experiment uses: ``train_and_evaluate(config, workdir)``.

Data order and PRNG keys are functions of the step (``sam_jax.data.train_batches`` with the epoch
and the batch index; ``fold_in(rng, step)``), so a run resumed from a checkpoint continues exactly as
an uninterrupted one. Evaluation, curvature tracking and user hooks run every few steps and write to
the same ``metrics.jsonl``.
"""

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from sam_jax import data
from sam_jax.calibration import calibration_metrics
from sam_jax import optim
from sam_jax.losses import StatefulLoss, get_loss, get_mixing, get_stateful_loss
from sam_jax.losses.validation import check_labels
from sam_jax.models import create_model
from sam_jax.training.checkpoint import Checkpointer, all_finite
from sam_jax.training.config import (
    chosen_hparams,
    optimizer_hparams,
    run_batch_size,
    validate_config,
    with_defaults,
)
from sam_jax.training.distributed import is_primary_process, sync_processes
from sam_jax.training.hooks import make_curvature_tracker, plot_sharpness
from sam_jax.training.inputs import RunData, load_run_data
from sam_jax.training.optimizers import learning_rate_schedule, make_optimizer
from sam_jax.training.preemption import PreemptionWatcher, TrainingPreempted
from sam_jax.training.provenance import provenance
from sam_jax.training.state import TrainState
from sam_jax.training.steps import donating_train_step, make_eval_step, make_train_step
from sam_jax.training.stopping import EarlyStop
from sam_jax.training.workdir import DiskFullError, check_writable, out_of_space_cause, prepare_workdir, workdir_lock
from sam_jax.training.writers import CONFIG_FILE, MetricsWriter, read_metrics

logger = logging.getLogger(__name__)


class TrainingDivergedError(FloatingPointError):
    """The training loss or parameters became NaN or infinite; the last good checkpoint is kept.

    Attributes:
      kept_step: the step of the checkpoint kept on disk (None when none was saved).
    """

    def __init__(self, message: str, kept_step: Optional[int] = None):
        super().__init__(message)
        self.kept_step = kept_step


@dataclasses.dataclass(frozen=True)
class Hook:
    """Calls ``fn(state) -> metrics`` every ``every_steps`` steps, at ``at_steps``, after the last
    step, and at step 0 when ``config.eval_at_start``.

    The returned metrics (a flat mapping, may be empty) go to ``metrics.jsonl`` under the step.
    """

    every_steps: int
    fn: Callable[[TrainState], Mapping[str, Any]]
    at_steps: frozenset[int] = frozenset()

    def due(self, step: int) -> bool:
        """Whether the hook runs after ``step`` (the last step and step 0 are the loop's business)."""
        return step % self.every_steps == 0 or step in self.at_steps


def log_spaced_steps(points_per_decade: int, max_step: int) -> frozenset[int]:
    """The steps ``round(10 ** (i / points_per_decade))``, ``i = 0, 1, ...``, up to ``max_step``.

    Dense early and sparse late, so a trajectory that changes fast at the start and slowly later
    (progressive sharpening, then a long approach to interpolation) is sampled evenly in log time;
    empty when ``points_per_decade`` is 0.
    """
    if points_per_decade <= 0:
        return frozenset()
    count = int(np.ceil(np.log10(max(max_step, 1)) * points_per_decade)) + 1
    steps = np.round(10.0 ** (np.arange(count) / points_per_decade)).astype(int)
    return frozenset(int(s) for s in steps if s <= max_step)


@dataclasses.dataclass(frozen=True)
class Run:
    """What a run is made of; built by :func:`build_run`, reused by experiments and evaluation."""

    config: ml_collections.ConfigDict
    data: RunData
    model: nn.Module
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    init_state: TrainState
    train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
    eval_step: Callable[[Any, Any, jax.Array], jax.Array]
    mesh: Mesh
    state_is_good: Callable[[TrainState, dict], jax.Array]
    optimizer: optim.OptimizerSpec
    loss: StatefulLoss
    loss_at: Callable[..., jax.Array]
    loss_epoch_update: Callable[..., Any]


def _mesh() -> Mesh:
    """The data-parallel mesh over every device of every process (``jax.distributed``)."""
    return Mesh(np.array(jax.devices()), ("data",))


def _batch_sharding(mesh: Mesh, batch_size: int, *, train: bool = False) -> NamedSharding:
    """Splits the batch over the devices.

    A training batch must divide evenly over the devices (data parallelism); one that does not is
    an error rather than a silently replicated, device-count-times slower step. An evaluation batch
    that does not divide is replicated.

    Raises:
      ValueError: ``train`` and ``batch_size`` is not a multiple of the device count.
    """
    if batch_size % mesh.size == 0:
        return NamedSharding(mesh, PartitionSpec("data"))
    if train:
        raise ValueError(
            f"Bad config: batch_size={batch_size} does not divide over the {mesh.size} devices; "
            f"choose a multiple of {mesh.size} (for a full-batch optimizer the batch is the "
            "training set: change data.train_size), or run on fewer devices."
        )
    return NamedSharding(mesh, PartitionSpec())


def _process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
    """The rows of a ``[batch_size, ...]`` array with ``sharding`` that this process's devices hold.

    In increasing order, as ``jax.make_array_from_process_local_data`` expects this process's part
    of a global array: all rows with one process or a replicated batch; with several processes and
    a batch split over the mesh, each process loads only its share (docs/scaling.md).
    """
    held = sharding.addressable_devices_indices_map((batch_size,)).values()
    return np.unique(np.concatenate([np.arange(batch_size)[index] for index in held]))


def _to_host(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly sharded across processes) array as NumPy, on every process.

    ``np.asarray`` of an array with rows on other processes' devices fails; the all-gather is a
    plain copy with one process.
    """
    return multihost_utils.process_allgather(array, tiled=True)


def _replicated(run: "Run", values: np.ndarray) -> jax.Array:
    """``values`` (the same on every process) replicated on every device of the run's mesh."""
    return jax.make_array_from_process_local_data(NamedSharding(run.mesh, PartitionSpec()), np.asarray(values))


def _augment(config: ml_collections.ConfigDict) -> Optional[Callable[[jax.Array, jax.Array], jax.Array]]:
    """``augment(key, images)`` for the train step from ``config.data.augment``; None when all off."""
    settings = config.data.augment
    if not (settings.crop_padding or settings.flip or settings.cutout_size):
        return None
    return functools.partial(
        data.augment_batch,
        crop_padding=settings.crop_padding,
        flip=settings.flip,
        cutout_size=settings.cutout_size,
    )


def build_run(config: ml_collections.ConfigDict, run_data: Optional[RunData] = None) -> Run:
    """Validates ``config``, loads its data (unless given) and builds the model, state and steps."""
    validate_config(config)
    run_data = run_data or load_run_data(config)
    check_run_data(run_data)
    num_train = len(run_data.train.labels)
    loss = get_stateful_loss(config.loss.name, **chosen_hparams(config.loss))
    if loss.epoch_split == "validation" and not len(run_data.val.labels):
        raise ValueError(
            f"Bad config: loss.name={config.loss.name!r} updates its state from the "
            "validation split; set data.val_size > 0."
        )
    validate_config(config, num_train)
    spec = optim.get_optimizer_spec(config.optimizer.name)
    hparams = optimizer_hparams(config)[config.optimizer.name]
    batch_size = run_batch_size(config, num_train)
    steps_per_epoch = data.num_batches(num_train, batch_size)
    total_steps = config.num_steps or config.num_epochs * steps_per_epoch

    model = create_model(config.model.name, run_data.num_classes, **config.model.kwargs.to_dict())
    tx = make_optimizer(config, total_steps, num_train)
    sample = np.asarray(run_data.train.images[:1])  # a constant of the traced init, not one process's array

    def init_variables(key: jax.Array) -> tuple[dict, jax.Array]:
        init_key, dropout_key, step_key = jax.random.split(key, 3)
        return dict(model.init({"params": init_key, "dropout": dropout_key}, sample, train=False)), step_key

    def init_state(variables: dict, step_key: jax.Array) -> TrainState:
        model_state = dict(variables)
        params = model_state.pop("params")
        return TrainState(
            jnp.zeros((), jnp.int32),
            params,
            model_state,
            tx.init(params),
            step_key,
            loss.init(num_train, run_data.num_classes),
        )

    mesh = _mesh()
    _batch_sharding(mesh, batch_size, train=True)  # fails now, before anything is compiled
    # The state is replicated on every device (data parallelism), so every process can read it.
    replicated = NamedSharding(mesh, PartitionSpec())
    # Two programs: the model's initialisation depends on the model and the data's shape only, so
    # runs that differ in their optimizer or loss share its (slow to compile) executable through
    # JAX's persistent compilation cache.
    variables, step_key = jax.jit(init_variables, out_shardings=replicated)(jax.random.PRNGKey(config.seed))
    state = jax.jit(init_state, out_shardings=replicated)(variables, step_key)

    m = spec.sub_batch_size(hparams)
    train_step = make_train_step(
        model,
        tx,
        loss,
        spec.descent_loss(hparams, config.loss.name, chosen_hparams(config.loss)),
        m=m if m < batch_size else 0,
        uses_clean_gradient=spec.uses_clean_gradient,
        mixing=get_mixing(config.mixing.name, **chosen_hparams(config.mixing)),
        augment=_augment(config),
        num_train=num_train,
        mesh=mesh,
    )
    eval_step = make_eval_step(model)

    def loss_at(logits: jax.Array, labels: jax.Array, loss_state: Any, mask: Optional[jax.Array] = None) -> jax.Array:
        return loss.loss(logits, labels, loss_state, mask=mask, indices=jnp.zeros_like(labels))

    def state_is_good(state: TrainState, batch: dict) -> jax.Array:
        """Whether ``state`` may be checkpointed: finite throughout, finite (inference) loss on ``batch``."""
        logits = eval_step(state.params, state.model_state, batch["image"])
        return all_finite(state) & jnp.isfinite(loss_at(logits, batch["label"], state.loss_state))

    return Run(
        config,
        run_data,
        model,
        batch_size,
        steps_per_epoch,
        total_steps,
        state,
        jax.jit(train_step, out_shardings=replicated),
        jax.jit(eval_step),
        mesh,
        jax.jit(state_is_good),
        spec,
        loss,
        jax.jit(loss_at),
        jax.jit(loss.epoch_update),
    )


def check_run_data(run_data: RunData) -> None:
    """Raises ``ValueError`` when a split has labels outside ``[0, K)`` or non-finite images.

    Runs on the host before anything is jitted: inside the train step a bad label would only show
    up later as a NaN loss, indistinguishable from divergence.
    """
    for split in ("train", "val", "test"):
        dataset = getattr(run_data, split)
        check_labels(dataset.labels, run_data.num_classes, where=f"the {split} split")
        # Streamed splits are uint8 records standardised by a finite normalizer: finite by
        # construction, and reading them all here would defeat streaming.
        if not len(dataset.labels) or isinstance(dataset.images, data.StreamedImages):
            continue
        finite = np.isfinite(dataset.images).reshape(len(dataset.labels), -1).all(axis=1)
        if not finite.all():
            index = int(np.argmin(finite))
            raise ValueError(
                f"the {split} split: image {index} contains NaN or inf "
                f"({int((~finite).sum())} such images); fix the data or its normalisation."
            )


def load_trained(
    workdir: str, step: Optional[int] = None, run_data: Optional[RunData] = None
) -> tuple[Run, TrainState]:
    """Rebuilds a saved run from ``<workdir>/config.json`` and restores its checkpoint.

    Args:
      workdir: a run directory written by :func:`train_and_evaluate`.
      step: the checkpoint step (default: the newest).
      run_data: the run's data, when already loaded (must match the saved config).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a sam_jax run directory.")
    with open(path) as f:
        config = ml_collections.ConfigDict(with_defaults(json.load(f)))
    run = build_run(config, run_data)
    checkpointer = Checkpointer(workdir)
    try:
        return run, checkpointer.restore(run.init_state, step)
    finally:
        checkpointer.close()


def predict(run: Run, params: Any, model_state: Any, dataset: data.ArrayDataset) -> np.ndarray:
    """Inference-mode logits ``[N, K]`` for every example of ``dataset``, in order, on every process.

    Each process loads its rows of every evaluation batch; the logits are gathered to all of them.
    """
    num_examples = len(dataset.labels)
    batch_size = min(run.config.eval_batch_size, max(num_examples, 1))
    sharding = _batch_sharding(run.mesh, batch_size)
    batches = data.eval_batches(dataset, batch_size, process_rows=_process_rows(sharding, batch_size))
    outputs = []
    with data.prefetch_to_device(batches, sharding=sharding) as device_batches:
        for batch in device_batches:
            outputs.append(_to_host(run.eval_step(params, model_state, batch["image"])))
    # Only the last batch is padded, at its end.
    return np.concatenate(outputs)[:num_examples] if outputs else np.zeros((0, run.data.num_classes), np.float32)


def _pad(logits: np.ndarray, labels: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Zero-pads to ``length`` examples with a mask, so every evaluation set shares one compiled shape."""
    extra = length - len(labels)
    return {
        "logits": np.pad(logits, ((0, extra),) + ((0, 0),) * (logits.ndim - 1)),
        "labels": np.pad(labels, (0, extra)),
        "mask": np.pad(np.ones(len(labels), np.float32), (0, extra)),
    }


def evaluate(run: Run, state: TrainState) -> dict[str, float]:
    """The calibration suite on the train subset, validation and test sets (``train/``, ``val/``, ``test/``).

    Predictions are the training loss's ``predict`` of the model's logits; ``loss`` is the training
    loss at the current loss state. TCE and the fitted temperature use the validation split; they
    are absent when it is empty.
    """
    train = run.data.train
    if run.config.eval_train_size:
        train = data.ArrayDataset(
            train.images[: run.config.eval_train_size], train.labels[: run.config.eval_train_size], train.num_classes
        )
    sets = {
        name: ds for name, ds in (("train", train), ("val", run.data.val), ("test", run.data.test)) if len(ds.labels)
    }
    length = max(len(ds.labels) for ds in sets.values())
    # Host copies: what follows is the same small computation on every process, on its own device.
    loss_state = jax.device_get(state.loss_state)
    # The model's outputs (what the loss reads) and the loss's predictions (what calibration reads).
    outputs = {
        name: _pad(predict(run, state.params, state.model_state, ds), ds.labels, length) for name, ds in sets.items()
    }
    padded = {
        name: {**arrays, "logits": np.asarray(run.loss.predict(arrays["logits"], loss_state))}
        for name, arrays in outputs.items()
    }
    val = padded.get("val")
    val_kwargs = {"val_logits": val["logits"], "val_labels": val["labels"], "val_mask": val["mask"]} if val else {}
    results = {}
    for name, arrays in padded.items():
        metrics = calibration_metrics(
            arrays["logits"], arrays["labels"], mask=arrays["mask"], num_bins=run.config.num_bins, **val_kwargs
        )
        model_outputs = outputs[name]["logits"]
        metrics["loss"] = float(run.loss_at(model_outputs, arrays["labels"], loss_state, arrays["mask"]))
        results.update({f"{name}/{k}": v for k, v in metrics.items()})
    return results


def _curvature_hook(run: Run) -> Optional[Hook]:
    config = run.config
    if config.curvature.every <= 0:
        return None
    train = run.data.train
    size = config.curvature.subset_size or len(train.labels)
    index = data.epoch_permutation(len(train.labels), config.curvature.seed, 0)[:size]
    images, labels = _replicated(run, train.images[index]), _replicated(run, train.labels[index])
    rho = run.optimizer.perturbation_radius(optimizer_hparams(config)[config.optimizer.name])
    # The training loss at its initial state (for a loss with state, e.g. AdaFocal's initial gamma).
    loss_fn = get_loss(config.loss.name, **chosen_hparams(config.loss))
    tracker = make_curvature_tracker(
        config.curvature, run.eval_step, loss_fn, batch_size=run.batch_size, perturbation_rho=rho
    )
    key = jax.random.PRNGKey(config.curvature.seed)

    def track(state: TrainState) -> Mapping[str, Any]:
        return tracker(state.params, state.model_state, images, labels, jax.random.fold_in(key, state.step))

    return Hook(config.curvature.every, track, log_spaced_steps(config.eval_points_per_decade, run.total_steps))


def _end_of_epoch_loss_update(run: Run, state: TrainState) -> TrainState:
    """The loss state after ``run.loss.epoch_update`` on its split (e.g. AdaFocal's validation bins)."""
    dataset = run.data.val if run.loss.epoch_split == "validation" else run.data.train
    logits = predict(run, state.params, state.model_state, dataset)
    loss_state = run.loss_epoch_update(state.loss_state, _replicated(run, logits), _replicated(run, dataset.labels))
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


def _diverged(step: int, what: str, checkpointer: Checkpointer) -> TrainingDivergedError:
    checkpointer.wait()
    last = checkpointer.latest_step()
    kept = (
        f"The last good checkpoint (step {last}) is kept in {checkpointer.directory}"
        if last is not None
        else "No checkpoint was saved before it"
    )
    return TrainingDivergedError(
        f"{what} at step {step}: the run diverged (the inputs were checked at start: finite images, "
        f"labels in range, so they are not the cause). {kept}; lower optimizer.learning_rate "
        f"(or rho) and start again.",
        kept_step=last,
    )


def _check_loss(step: int, metrics: Mapping[str, Any], checkpointer: Checkpointer) -> dict[str, Any]:
    """Host copy of a step's metrics; raises when its loss (at the previous parameters) is not finite."""
    values = jax.device_get(metrics)
    loss = float(values["loss"])
    if not math.isfinite(loss):
        raise _diverged(step, f"Training loss is {loss} (at the parameters of step {step - 1})", checkpointer)
    return values


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: Optional[str] = None,
    hooks: Sequence[Hook] = (),
    run: Optional[Run] = None,
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
            raise _disk_full(workdir, full) from err


def _disk_full(workdir: str, cause: BaseException) -> DiskFullError:
    """The error for a write that failed for lack of space, naming the newest complete checkpoint."""
    kept = "No checkpoint had been written"
    if os.path.isdir(os.path.join(workdir, "checkpoints")):  # opening a manager creates the folder otherwise
        checkpointer = Checkpointer(workdir)
        try:
            steps = checkpointer.all_steps()
        finally:
            checkpointer.close()
        if steps:
            kept = f"The newest complete checkpoint, step {steps[-1]} in {checkpointer.directory}, is kept"
    return DiskFullError(
        f"Out of disk space while writing the run in {workdir!r}: {cause}. {kept}; free some space "
        "(or copy the workdir to a disk that has it) and run the same command again to resume."
    )


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook], run: Optional[Run]
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
    curvature_hook = _curvature_hook(run)
    if curvature_hook is not None:
        all_hooks.append(curvature_hook)

    if start_step == 0 and config.eval_at_start:
        initial: dict[str, Any] = {"epoch": 0.0}
        for hook in all_hooks:
            initial.update(hook.fn(state))
        writer.write(0, initial)

    batch_sharding = _batch_sharding(run.mesh, run.batch_size, train=True)
    rows = _process_rows(batch_sharding, run.batch_size)
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
                            raise _diverged(
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
