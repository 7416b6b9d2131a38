"""The shared train loop: config errors, determinism, hooks, BN state, every optimizer (see also test_reliability)."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sam_jax import models
from sam_jax.training import Hook, build_run, default_config, read_metrics, train_and_evaluate, validate_config
from sam_jax.training.checkpoint import Checkpointer
from sam_jax.training.loop import log_spaced_steps
from sam_jax.training.stopping import EarlyStop


def digits_config(workdir: str, **overrides) -> ml_collections.ConfigDict:
    """A tiny MLP on scikit-learn's digits: seconds per run."""
    config = default_config()
    config.workdir = workdir
    config.data.name = "digits"
    config.data.val_size = 200
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict({"widths": (32,), "activation": "tanh"})
    config.optimizer.learning_rate = 0.1
    config.batch_size = 64
    config.num_steps = 40
    config.eval_every_steps = 20
    config.eval_batch_size = 256
    config.log_every_steps = 10
    config.checkpoint_every_steps = 20
    config.progress_bar = False
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.name": "resnet9000"}, "model.name"),
        ({"data.name": "imagenet22k"}, "data.name"),
        ({"optimizer.name": "lion"}, "optimizer.name"),
        ({"optimizer.learning_rate": -0.1}, "optimizer.learning_rate"),
        ({"optimizer.name": "sam", "optimizer.sam.rho": -1.0}, r"optimizer\.sam\.rho"),
        ({"optimizer.name": "sam", "optimizer.sam.base": "muon"}, r"optimizer\.sam\.base"),
        ({"optimizer.name": "bsam", "optimizer.bsam.init_precision": 0.0}, r"optimizer\.bsam\.init_precision"),
        ({"optimizer.name": "bulk_sgd", "optimizer.bulk_sgd.k": 20}, r"optimizer\.bulk_sgd\.k"),
        ({"optimizer.schedule": "exp"}, "optimizer.schedule"),
        ({"loss.name": "hinge"}, "loss.name"),
        ({"loss.name": "focal", "loss.focal.gamma": -1.0}, "gamma"),
        ({"num_epochs": 0, "num_steps": 0}, "num_epochs"),
        # A field of a block the chosen optimizer (or loss) does not read would be silently ignored.
        ({"optimizer.adamw.weight_decay": 0.0}, r"optimizer\.adamw\.weight_decay.*does not read"),
        ({"optimizer.name": "adamw", "optimizer.sgd.momentum": 0.0}, r"optimizer\.sgd\.momentum.*does not read"),
        (
            {"optimizer.name": "sam", "optimizer.sam.base": "adamw", "optimizer.sgd.momentum": 0.5},
            r"optimizer\.sgd\.momentum.*does not read",
        ),
        ({"optimizer.name": "sam", "optimizer.csam.gamma": 2.0}, r"optimizer\.csam\.gamma.*does not read"),
        ({"loss.focal.gamma": 2.0}, r"loss\.focal\.gamma.*does not read"),
        # Unknown hyper-parameters and values of the wrong type.
        ({"optimizer.name": "sam", "optimizer.sam.rhoo": 0.1}, r"optimizer\.sam\.rhoo is not a hyper-parameter"),
        ({"loss.name": "focal", "loss.focal.alpha": 1.0}, r"loss\.focal.*unknown hyper-parameter 'alpha'"),
        # CSAM reweights a per-example training loss (eq. 4); over any other loss it is not defined.
        (
            {"optimizer.name": "csam", "loss.name": "mmce"},
            r"optimizer\.name='csam' with loss\.name='mmce'.*not a mean of per-example terms.*not defined",
        ),
        ({"optimizer.name": "csam", "loss.name": "adafocal"}, r"loss\.name='adafocal'.*not defined"),
        ({"optimizer.name": "csam", "loss.name": "csam"}, r"loss\.name='csam'.*not defined"),
    ],
    ids=lambda value: "-".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else None,
)
def test_bad_config_fails_with_clear_message(tmp_path, overrides, message):
    config = digits_config(str(tmp_path), **overrides)
    with pytest.raises(ValueError, match=message):
        validate_config(config)


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer.sgd.momentum": 0.5, "optimizer.sgd.nesterov": True, "optimizer.sgd.weight_decay": 5e-4},
        {"optimizer.name": "sam", "optimizer.sgd.momentum": 0.0, "optimizer.sam.rho": 0.1},
        {"optimizer.name": "csam", "optimizer.csam.base": "adamw", "optimizer.adamw.weight_decay": 0.0},
        {"optimizer.name": "gd", "optimizer.gd.weight_decay": 1e-3},
        {"loss.name": "focal", "loss.focal.gamma": 2.0},
        {"loss.name": "label_smoothing", "loss.label_smoothing.smoothing": 0.05},
        # FL+CSAM and ACLS+CSAM (Tan et al. 2025, Table S15): eq. (4) over the per-example loss.
        {"optimizer.name": "csam", "loss.name": "focal", "loss.focal.gamma": 2.0, "optimizer.csam.gamma": 0.5},
        {"optimizer.name": "csam", "loss.name": "acls"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_blocks_the_optimizer_and_loss_read_may_be_set(tmp_path, overrides):
    # A SAM-family optimizer reads its own block and the block of its base.
    validate_config(digits_config(str(tmp_path), **overrides))


def test_batch_larger_than_dataset_fails(tmp_path):
    config = digits_config(str(tmp_path), batch_size=100_000)
    with pytest.raises(ValueError, match="larger than the training set"):
        build_run(config)


def test_csam_gamma_and_m_are_validated(tmp_path):
    # gamma > 2 leaves Theorem 3 of Tan et al. (2025) but is inside their Figure S6 sweep (up to 3).
    validate_config(digits_config(str(tmp_path), **{"optimizer.name": "csam", "optimizer.csam.gamma": 3.0}))
    with pytest.raises(ValueError, match="gamma"):
        validate_config(digits_config(str(tmp_path), **{"optimizer.name": "csam", "optimizer.csam.gamma": -0.5}))
    with pytest.raises(ValueError, match="divide"):
        validate_config(digits_config(str(tmp_path), **{"optimizer.name": "sam", "optimizer.sam.m": 7}))


def test_outputs_and_same_seed_gives_identical_metrics(tmp_path):
    first = train_and_evaluate(digits_config(str(tmp_path / "a")))
    second = train_and_evaluate(digits_config(str(tmp_path / "b")))
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert os.path.exists(tmp_path / "a" / name)
    records_a, records_b = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
    assert records_a == records_b
    assert [r["step"] for r in records_a] == [0, 10, 20, 30, 40]
    assert first["test/accuracy"] == second["test/accuracy"] > 0.5
    for key in ("test/ece", "test/nll", "val/ece", "train/accuracy", "test/tce"):
        assert np.isfinite(first[key]), key
    assert json.load(open(tmp_path / "a" / "config.json"))["data"]["name"] == "digits"


def test_different_seed_gives_different_run(tmp_path):
    first = train_and_evaluate(digits_config(str(tmp_path / "a")))
    second = train_and_evaluate(digits_config(str(tmp_path / "b"), seed=1))
    assert first["test/nll"] != second["test/nll"]


def test_hooks_run_on_schedule(tmp_path):
    calls = []

    def hook(state):
        calls.append(int(state.step))
        return {"hook/step": int(state.step)}

    train_and_evaluate(digits_config(str(tmp_path)), hooks=[Hook(15, hook)])
    assert calls == [0, 15, 30, 40]
    assert [r["hook/step"] for r in read_metrics(str(tmp_path)) if "hook/step" in r] == calls


def test_log_spaced_steps():
    assert log_spaced_steps(0, 1000) == frozenset()
    assert sorted(log_spaced_steps(2, 1000)) == [1, 3, 10, 32, 100, 316, 1000]
    assert sorted(log_spaced_steps(4, 20)) == [1, 2, 3, 6, 10, 18]


def test_log_spaced_evaluation_and_early_stop_at_a_metric(tmp_path):
    """Evaluation runs at the log-spaced steps too; the run stops at the first evaluation that
    reaches the target, checkpoints there, and says so in its summary; resuming it does not train on."""
    calls = []

    def hook(state):
        calls.append(int(state.step))
        return {}

    overrides = {
        "num_steps": 400,
        "eval_every_steps": 100,
        "eval_points_per_decade": 5,
        "early_stop.metric": "train/accuracy",
        "early_stop.at_least": 0.9,
    }
    summary = train_and_evaluate(digits_config(str(tmp_path), **overrides), hooks=[Hook(1000, hook)])
    evaluated = [r["step"] for r in read_metrics(str(tmp_path)) if "train/accuracy" in r]
    end = summary["total_steps"]
    assert summary["stopped_early"] and end < 400 and summary["max_steps"] == 400
    assert summary["train/accuracy"] >= 0.9
    expected = sorted({0, end} | {s for s in range(1, end + 1) if s % 100 == 0} | set(log_spaced_steps(5, end)))
    assert evaluated == expected
    assert all(
        r["train/accuracy"] < 0.9 for r in read_metrics(str(tmp_path)) if r["step"] < end and "train/accuracy" in r
    )
    assert calls == [0, end]  # every hook reports on the stopping step
    assert Checkpointer(str(tmp_path)).latest_step() == end
    os.remove(tmp_path / "summary.json")  # as if interrupted before the summary was written
    again = train_and_evaluate(digits_config(str(tmp_path), **overrides))
    assert again["total_steps"] == end and again["resumed_from_step"] == end


def test_early_stop_horizon_goes_past_the_target_and_resumes_to_the_same_end(tmp_path):
    """With horizon_factor 3 the run goes on past the first evaluation that meets the target, to
    ceil(3 x that step), where every hook reports; killed before its summary, it ends there again,
    and a resume from a checkpoint before the end stops at the same step (the target step is
    rebuilt from metrics.jsonl)."""
    calls = []

    def hook(state):
        calls.append(int(state.step))
        return {}

    overrides = {
        "num_steps": 600,
        "eval_every_steps": 10,
        "checkpoint_every_steps": 20,
        "early_stop.metric": "train/accuracy",
        "early_stop.at_least": 0.9,
        "early_stop.horizon_factor": 3.0,
    }
    summary = train_and_evaluate(digits_config(str(tmp_path / "a"), **overrides), hooks=[Hook(1000, hook)])
    records = [r for r in read_metrics(str(tmp_path / "a")) if "train/accuracy" in r]
    target = next(r["step"] for r in records if r["train/accuracy"] >= 0.9)
    end = summary["total_steps"]
    assert 0 < target < end == math.ceil(3 * target) < 600 and summary["stopped_early"]
    assert calls == [0, end] and records[-1]["step"] == end

    # Interrupted half-way (a checkpoint past the target step, before the end): it resumes to the same end.
    resumed = tmp_path / "b"
    first = train_and_evaluate(digits_config(str(resumed), **dict(overrides, **{"early_stop.horizon_factor": 0.0})))
    assert first["total_steps"] == target
    # Same run (same config apart from the rule), continued with the horizon rule from its checkpoint.
    config = digits_config(str(resumed), **overrides)
    with open(resumed / "config.json") as f:
        saved = json.load(f)
    saved["early_stop"]["horizon_factor"] = 3.0
    with open(resumed / "config.json", "w") as f:
        json.dump(saved, f)
    os.remove(resumed / "summary.json")
    again = train_and_evaluate(config)
    assert again["resumed_from_step"] == target and again["total_steps"] == end


def test_early_stop_floor_ends_the_run_below_a_loss():
    rule = EarlyStop(metric="train/accuracy", at_least=0.99, horizon_factor=3.0, below_metric="train/loss", below=1e-3)
    assert not rule.update(10, {"train/accuracy": 0.5, "train/loss": 0.7})
    assert not rule.update(20, {"train_step/loss": 0.1})  # a log-only record meets nothing
    assert not rule.update(40, {"train/accuracy": 0.995, "train/loss": 0.01}) and rule.target_step == 40
    assert rule.horizon_end == 120
    assert not rule.update(80, {"train/accuracy": 0.98, "train/loss": 0.002})  # the target step stays 40
    assert rule.update(90, {"train/accuracy": 1.0, "train/loss": 9e-4})  # the floor comes first
    late = EarlyStop(metric="train/accuracy", at_least=0.99, horizon_factor=3.0)
    assert late.replay([{"step": 0, "train/accuracy": 0.1}, {"step": 7, "train/accuracy": 0.99}]) is False
    assert late.update(21, {}) and late.horizon_end == 21
    assert EarlyStop(below_metric="val/nll", below=0.5).update(3, {"val/nll": 0.4})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"early_stop.horizon_factor": 0.5, "early_stop.metric": "train/accuracy"}, "horizon_factor"),
        ({"early_stop.horizon_factor": 2.0}, "no target to follow"),
        ({"early_stop.below_metric": "loss"}, "early_stop.below_metric"),
    ],
)
def test_bad_early_stop_rules_are_clear_errors(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        validate_config(digits_config(str(tmp_path), **overrides))


def test_padding_and_test_size_reach_the_run(tmp_path):
    run = build_run(digits_config(str(tmp_path), **{"data.pad_to": 10, "data.test_size": 50}))
    assert run.data.train.images.shape[1:3] == (10, 10) and len(run.data.test.labels) == 50
    with pytest.raises(ValueError, match="data.pad_to"):
        validate_config(digits_config(str(tmp_path), **{"data.pad_to": -1}))


def test_bad_early_stop_metric_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="early_stop.metric"):
        validate_config(digits_config(str(tmp_path), **{"early_stop.metric": "accuracy"}))


class _BatchNormMLP(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape((x.shape[0], -1))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x))
        return nn.Dense(self.num_classes)(nn.relu(x))


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_batchnorm_statistics_come_from_the_clean_pass(tmp_path, monkeypatch, optimizer):
    monkeypatch.setitem(models.MODELS, "bn_mlp", _BatchNormMLP)
    config = digits_config(
        str(tmp_path),
        **{
            "model.name": "bn_mlp",
            "model.kwargs": ml_collections.ConfigDict(),
            "optimizer.name": optimizer,
            "num_steps": 1,
        },
    )
    run = build_run(config)
    state = jax.tree_util.tree_map(jnp.copy, run.init_state)
    batch = {
        "image": jnp.asarray(run.data.train.images[:64]),
        "label": jnp.asarray(run.data.train.labels[:64]),
        "index": jnp.arange(64, dtype=jnp.int32),
    }  # positions in the training set
    new_state, _ = run.train_step(state, batch)
    variables = {"params": run.init_state.params, **run.init_state.model_state}
    _, expected = run.model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    jax.tree_util.tree_map(np.testing.assert_allclose, new_state.model_state, dict(expected))


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer.name": "gd"},
        {"optimizer.name": "adamw", "optimizer.learning_rate": 3e-3},
        {"optimizer.name": "muon", "optimizer.learning_rate": 0.02},
        {"optimizer.name": "asam", "optimizer.asam.rho": 0.5},
        {"optimizer.name": "ssam"},
        {"optimizer.name": "csam", "optimizer.csam.gamma": 1.5},
        {"optimizer.name": "sam", "optimizer.sam.base": "adamw", "optimizer.learning_rate": 3e-3},
        {"optimizer.name": "sam", "optimizer.sam.m": 16},
        {"optimizer.name": "bsam", "optimizer.learning_rate": 0.5, "optimizer.bsam.rho": 0.01},
        {"optimizer.name": "bulk_sgd", "optimizer.bulk_sgd.k": 2, "optimizer.bulk_sgd.num_iters": 8},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
@pytest.mark.slow  # tests/test_wiring.py checks every optimizer's steps in the loop exactly
def test_every_optimizer_trains_in_the_loop(tmp_path, overrides):
    config = digits_config(str(tmp_path), num_steps=30, eval_every_steps=30, checkpoint_every_steps=30, **overrides)
    summary = train_and_evaluate(config)
    assert summary["test/accuracy"] > 0.5, summary["test/accuracy"]
    assert np.isfinite(summary["test/nll"])


@pytest.mark.parametrize("loss_name, loss_hparams", [("cross_entropy", {}), ("focal", {"gamma": 2.0})])
def test_csam_step_ascends_on_the_training_loss_and_descends_on_its_reweighting(tmp_path, loss_name, loss_hparams):
    """CSAM in the loop: cross-entropy is Algorithm 1 (eq. 4), focal loss is FL+CSAM (Table S15)."""
    import optax

    from sam_jax import optim
    from sam_jax.losses import csam_descent_loss, get_loss

    config = digits_config(
        str(tmp_path),
        **{
            "optimizer.name": "csam",
            "optimizer.csam.gamma": 2.0,
            "optimizer.csam.rho": 0.3,
            "optimizer.schedule": "constant",
            "loss.name": loss_name,
            **{f"loss.{loss_name}.{k}": v for k, v in loss_hparams.items()},
        },
    )
    run = build_run(config)
    batch = {
        "image": jnp.asarray(run.data.train.images[:64]),
        "label": jnp.asarray(run.data.train.labels[:64]),
        "index": jnp.arange(64, dtype=jnp.int32),
    }  # positions in the training set
    new_state, _ = run.train_step(run.init_state, batch)

    def objective(loss):
        return lambda p: loss(run.model.apply({"params": p}, batch["image"]), batch["label"])

    params = run.init_state.params
    assert config.optimizer.csam.base == "sgd"  # the reference below is SAM around plain SGD
    sgd = config.optimizer.sgd
    assert (sgd.nesterov, sgd.weight_decay) == (False, 0.0)
    tx = optim.sam(optax.sgd(config.optimizer.learning_rate, momentum=sgd.momentum), 0.3)
    updates, _ = tx.update(
        jax.grad(objective(get_loss(loss_name, **loss_hparams)))(params),
        tx.init(params),
        params,
        grad_fn=jax.grad(objective(csam_descent_loss(loss_name, 2.0, loss_hparams))),
    )
    expected = optax.apply_updates(params, updates)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_state.params, expected
    )


def test_summary_records_the_code_version_device_and_library_versions(tmp_path):
    import subprocess

    import flax

    config = digits_config(str(tmp_path), num_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
    summary = train_and_evaluate(config)
    record = summary["provenance"]
    assert record["versions"]["jax"] == jax.__version__ and record["versions"]["flax"] == flax.__version__
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__), capture_output=True, text=True)
    assert record["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert summary["device"] == f"cpu: {jax.devices()[0].device_kind}" and summary["host_cpu_count"] == os.cpu_count()
    with open(os.path.join(str(tmp_path), "summary.json")) as f:
        assert json.load(f)["provenance"] == record
