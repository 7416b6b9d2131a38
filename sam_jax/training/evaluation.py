"""What the train loop runs every few steps besides the step: evaluation and curvature tracking.

A :class:`Hook` is ``fn(state) -> metrics`` with the steps it runs at; :func:`evaluate` is the
calibration suite on the train subset, validation and test sets, over the logits :func:`predict`
gathers batch by batch; :func:`curvature_hook` wraps ``sam_jax.training.hooks``' curvature tracker
for the ``curvature`` config block, and :func:`top_eigenvalue` runs the same tracker once on a saved
or initial state.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import data
from sam_jax.calibration import calibration_metrics
from sam_jax.losses import get_loss
from sam_jax.training import sharding
from sam_jax.training.build import Run
from sam_jax.training.config import chosen_hparams, optimizer_hparams
from sam_jax.training.hooks import default_curvature_config, make_curvature_tracker
from sam_jax.training.state import TrainState


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


def predict(run: Run, params: Any, model_state: Any, dataset: data.ArrayDataset) -> np.ndarray:
    """Inference-mode logits ``[N, K]`` for every example of ``dataset``, in order, on every process.

    Each process loads its rows of every evaluation batch; the logits are gathered to all of them.
    """
    num_examples = len(dataset.labels)
    batch_size = min(run.config.eval_batch_size, max(num_examples, 1))
    batch_sharding = sharding.batch_sharding(run.mesh, batch_size)
    rows = sharding.process_rows(batch_sharding, batch_size)
    batches = data.eval_batches(dataset, batch_size, process_rows=rows)
    outputs = []
    with data.prefetch_to_device(batches, sharding=batch_sharding) as device_batches:
        for batch in device_batches:
            outputs.append(sharding.to_host(run.eval_step(params, model_state, batch["image"])))
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


def curvature_hook(run: Run) -> Hook | None:
    """The curvature tracker of ``config.curvature`` on a fixed training subset; None when it is off."""
    config = run.config
    if config.curvature.every <= 0:
        return None
    train = run.data.train
    size = config.curvature.subset_size or len(train.labels)
    index = data.epoch_permutation(len(train.labels), config.curvature.seed, 0)[:size]
    images = sharding.replicate(run.mesh, train.images[index])
    labels = sharding.replicate(run.mesh, train.labels[index])
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


def top_eigenvalue(
    run: Run,
    state: TrainState,
    images: np.ndarray | jax.Array,
    labels: np.ndarray | jax.Array,
    *,
    curvature: str = "hessian",
    loss: str = "cross_entropy",
    num_iters: int = 30,
    tolerance: float = 0.0,
) -> float:
    """The top eigenvalue of the Hessian or the Gauss-Newton matrix of ``loss`` at ``state``.

    The curvature of the mean ``loss`` of the run's predictions (its loss's ``predict`` of the
    model's logits, in inference mode) on ``images`` and ``labels``, by Lanczos through the curvature
    tracker of the train loop (``sam_jax.training.hooks``), batch by batch: the one route from a run
    and a state (final, saved or initial) to its sharpness.

    Args:
      run: a built run (``build_run`` or ``load_trained``).
      state: the state whose parameters are measured, e.g. ``run.init_state``.
      images: the inputs of the loss.
      labels: their integer labels.
      curvature: ``"hessian"`` or ``"gauss_newton"``.
      loss: a registered loss name, at its default hyper-parameters.
      num_iters: Lanczos steps (the maximum with a tolerance).
      tolerance: stop once the Ritz residual is below this fraction of the eigenvalue; 0 runs
        every step.

    Returns:
      The eigenvalue.
    """
    block = default_curvature_config()
    block.every = 1
    block.quantities = curvature
    block.num_iters = num_iters
    block.tolerance = tolerance
    loss_state = state.loss_state

    def model_apply(params: Any, model_state: Any, inputs: jax.Array) -> jax.Array:
        return run.loss.predict(run.eval_step(params, model_state, inputs), loss_state)

    tracker = make_curvature_tracker(block, model_apply, get_loss(loss), batch_size=run.batch_size)
    metrics = tracker(state.params, state.model_state, jnp.asarray(images), jnp.asarray(labels), jax.random.PRNGKey(0))
    return float(metrics[f"curvature/{curvature}_top1"])
