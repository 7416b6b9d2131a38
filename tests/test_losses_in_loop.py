"""Every registered training loss trains through the shared loop on real data (digits), alone and
with SAM / CSAM, and so do mixup and MIT-L; a loss's state (AdaFocal's gammas, CRL's history) and
the mixing draws survive a restart exactly.

The threshold runs are ``slow`` (run with ``-m slow``) where ``tests/test_wiring_objectives.py``
checks the same path exactly, step by step against a hand-built reference: the configured loss
and its hyper-parameters, CRL's history, the evaluation loss, SAM / CSAM with a non-default loss,
mixup and MIT-L. The losses with an end-of-epoch update that those few steps do not reach
(AdaFocal on the validation split, BalCAL's two heads on the train split), CRL under SAM, and the
restarts stay in the default run.
"""

import os
import signal

import jax
import ml_collections
import numpy as np
import pytest

from sam_jax.losses import LOSSES, get_stateful_loss
from sam_jax.training import (
    Checkpointer,
    Hook,
    TrainingPreempted,
    build_run,
    load_run_data,
    read_metrics,
    train_and_evaluate,
)
from tests.test_training import digits_config

# BalCAL trains a two-headed model (logits [B, 2, K]): the dual_head model over the same MLP.
TWO_HEADS = {"balcal"}
# Losses whose end-of-epoch update (or two-headed model) only a run of more than an epoch exercises.
EPOCH_UPDATED = {"adafocal", "balcal"}
TRAINABLE = [name if name in EPOCH_UPDATED else pytest.param(name, marks=pytest.mark.slow) for name in sorted(LOSSES)]
SLOW = pytest.mark.slow


def _model_overrides(loss: str) -> dict:
    if loss not in TWO_HEADS:
        return {}
    return {
        "model.name": "dual_head",
        "model.kwargs": ml_collections.ConfigDict(
            {"backbone": "mlp", "backbone_kwargs": {"widths": (32,), "activation": "tanh"}, "feature_dim": 32}
        ),
    }


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_run_data(digits_config(str(tmp_path_factory.mktemp("data"))))


def _train(workdir: str, run_data, hooks=(), **overrides) -> dict:
    config = digits_config(
        workdir, num_steps=40, eval_every_steps=40, eval_at_start=False, eval_train_size=200, **overrides
    )
    return train_and_evaluate(config, hooks=hooks, run=build_run(config, run_data))


@pytest.mark.parametrize("loss", TRAINABLE)
def test_loss_trains_in_the_loop(tmp_path, digits, loss):
    summary = _train(str(tmp_path), digits, **{"loss.name": loss}, **_model_overrides(loss))
    assert summary["test/accuracy"] > 0.6, summary  # chance is 0.1
    losses = [r["train_step/loss"] for r in read_metrics(str(tmp_path)) if "train_step/loss" in r]
    assert losses[-1] < losses[0], losses
    assert np.isfinite(summary["test/loss"]) and np.isfinite(summary["test/ece"])


@pytest.mark.parametrize(
    "loss, optimizer",
    [
        pytest.param("focal", "sam", marks=SLOW),
        pytest.param("acls", "sam", marks=SLOW),
        pytest.param("focal", "csam", marks=SLOW),
        pytest.param("acls", "csam", marks=SLOW),
        ("crl", "sam"),
    ],
)
def test_loss_trains_with_sharpness_aware_optimizers(tmp_path, digits, loss, optimizer):
    summary = _train(str(tmp_path), digits, **{"loss.name": loss, "optimizer.name": optimizer})
    assert summary["test/accuracy"] > 0.6, summary


@SLOW
@pytest.mark.parametrize("mixing, alpha", [("mixup", 0.4), ("mit", 1.0)])
def test_mixing_trains_in_the_loop(tmp_path, digits, mixing, alpha):
    summary = _train(str(tmp_path), digits, **{"mixing.name": mixing, f"mixing.{mixing}.alpha": alpha})
    assert summary["test/accuracy"] > 0.6, summary


@pytest.mark.parametrize("loss, mixing", [("adafocal", "none"), ("crl", "mixup")])
def test_loss_state_and_mixing_survive_a_restart_exactly(tmp_path, digits, loss, mixing):
    overrides = {
        "loss.name": loss,
        "mixing.name": mixing,
        "num_steps": 40,
        "eval_every_steps": 40,
        "eval_at_start": False,
        "eval_train_size": 200,
        "checkpoint_every_steps": 10,
    }
    reference_dir, stopped_dir = str(tmp_path / "reference"), str(tmp_path / "stopped")
    config = digits_config(reference_dir, **overrides)
    train_and_evaluate(config, run=build_run(config, digits))

    def stop_at_step_20(state):
        if int(state.step) == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    stopped = digits_config(stopped_dir, **overrides)
    with pytest.raises(TrainingPreempted):
        train_and_evaluate(stopped, hooks=[Hook(10, stop_at_step_20)], run=build_run(stopped, digits))
    assert train_and_evaluate(stopped, run=build_run(stopped, digits))["resumed_from_step"] == 21

    def final(workdir: str) -> list[np.ndarray]:
        run = build_run(config, digits)
        checkpointer = Checkpointer(workdir)
        try:
            state = checkpointer.restore(run.init_state, step=40)
        finally:
            checkpointer.close()
        initial = get_stateful_loss(loss).init(len(digits.train.labels), digits.num_classes)
        changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), state.loss_state, initial)
        assert any(jax.tree_util.tree_leaves(changed)) or not jax.tree_util.tree_leaves(initial), (
            "the loss state never changed"
        )
        return [np.asarray(x) for x in jax.tree_util.tree_leaves((state.params, state.loss_state))]

    for got, want in zip(final(stopped_dir), final(reference_dir), strict=True):
        np.testing.assert_array_equal(got, want)
