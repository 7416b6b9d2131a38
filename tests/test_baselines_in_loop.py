"""The ensemble and Bayesian baselines train through the shared loop on real data (digits) and are
evaluated by the one predictive interface; the step's member and penalty contracts against plain
references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.special

from experiments.configs.evaluate import get_config as evaluate_config
from experiments.evaluate import evaluate_checkpoint
from sam_jax import calibration
from sam_jax.losses import get_stateful_loss
from sam_jax.training import (
    build_run,
    load_run_data,
    load_trained,
    make_train_step,
    predict,
    read_metrics,
    train_and_evaluate,
)
from sam_jax.training.state import TrainState
from sam_jax.training.steps import make_eval_step
from tests.test_training import digits_config

MLP = {"widths": (32,), "activation": "tanh"}
WRAPPERS = {
    "batch_ensemble": {"ensemble_size": 3},
    "mimo": {"ensemble_size": 2},
    "rank1_bnn": {"ensemble_size": 3, "prior_std": 0.5},
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_run_data(digits_config(str(tmp_path_factory.mktemp("data"))))


def _train(workdir: str, run_data, **overrides) -> dict:
    config = digits_config(workdir, num_steps=60, eval_every_steps=60, eval_at_start=False, **overrides)
    return train_and_evaluate(config, run=build_run(config, run_data))


def _first_and_last_losses(workdir: str) -> tuple[float, float]:
    losses = [r["train_step/loss"] for r in read_metrics(workdir) if "train_step/loss" in r]
    return losses[0], losses[-1]


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
def test_multi_member_model_trains_and_is_evaluated_as_an_ensemble(tmp_path, digits, wrapper):
    kwargs = ml_collections.ConfigDict({"backbone": "mlp", "backbone_kwargs": MLP, **WRAPPERS[wrapper]})
    workdir = str(tmp_path / wrapper)
    summary = _train(workdir, digits, **{"model.name": wrapper, "model.kwargs": kwargs})
    assert summary["test/accuracy"] > 0.6, summary  # chance is 0.1
    first, last = _first_and_last_losses(workdir)
    assert last < first
    assert np.isfinite(summary["test/ece"]) and np.isfinite(summary["val/tce"])
    # The evaluation driver's predictive (members averaged in the eval step) is the loop's.
    config = evaluate_config()
    config.checkpoint, config.output_dir, config.posterior_samples = workdir, str(tmp_path / "eval"), 0
    results = evaluate_checkpoint(config)
    np.testing.assert_allclose(results["test"]["nll"], summary["test/nll"], rtol=1e-4)


def test_mean_field_vi_trains_and_predicts_with_posterior_samples(tmp_path, digits):
    workdir = str(tmp_path / "vi")
    summary = _train(
        workdir, digits, **{"optimizer.name": "vi", "optimizer.learning_rate": 0.01, "optimizer.vi.init_std": 0.01}
    )
    assert summary["test/accuracy"] > 0.6, summary
    config = evaluate_config()
    config.checkpoint, config.output_dir, config.posterior_samples = workdir, str(tmp_path / "eval"), 8
    results = evaluate_checkpoint(config)
    assert results["predictive"] == "posterior"
    assert np.isfinite(results["test"]["nll"]) and results["test"]["nll"] != summary["test/nll"]
    assert results["test"]["accuracy"] > 0.6


class _FixedMembers(nn.Module):
    """Logits ``[B, 2, K]`` from one dense layer, member 1 the negation of member 0; sows a penalty."""

    ensemble_size: int = 2
    penalty: float = 0.0

    @nn.compact
    def __call__(self, x, train=False):
        logits = nn.Dense(3)(x.reshape((x.shape[0], -1)))
        if train and self.penalty:
            self.sow("penalties", "kl", self.penalty * jnp.sum(self.variables["params"]["Dense_0"]["kernel"] ** 2))
        return jnp.stack([logits, -logits], axis=1)


@pytest.mark.parametrize("penalty", [0.0, 2.5])
def test_step_averages_member_losses_and_adds_penalties_over_n(penalty):
    model = _FixedMembers(penalty=penalty)
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(6, 4)).astype(np.float32), rng.integers(0, 3, 6)
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    loss = get_stateful_loss("cross_entropy")
    num_train = 50
    step = jax.jit(make_train_step(model, optax.sgd(0.1), loss, num_train=num_train))
    state = TrainState(jnp.zeros((), jnp.int32), params, {}, optax.sgd(0.1).init(params), jax.random.PRNGKey(1), ())
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels), "index": jnp.arange(6)}
    _, metrics = step(state, batch)

    logits = np.asarray(model.apply({"params": params}, images))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    member_ce = [-log_probs[np.arange(6), m, labels].mean() for m in range(2)]
    kernel = np.asarray(params["Dense_0"]["kernel"])
    expected = np.mean(member_ce) + penalty * np.sum(kernel**2) / num_train
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    averaged = np.log(np.exp(log_probs).mean(1))
    np.testing.assert_allclose(metrics["accuracy"], np.mean(averaged.argmax(-1) == labels), rtol=1e-6)
    eval_logits = make_eval_step(model)(params, {}, jnp.asarray(images))
    np.testing.assert_allclose(eval_logits, averaged, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(calibration.member_average_log_probs(jnp.asarray(logits)), averaged, rtol=1e-5)


def test_deep_ensemble_experiment_trains_members_and_averages_them(tmp_path):
    from experiments import deep_ensemble
    from experiments.configs.deep_ensemble import get_config as ensemble_config

    config = ensemble_config("quick")
    config.workdir, config.num_steps, config.eval_every_steps = str(tmp_path), 10, 10
    config.ensemble.size, config.ensemble.mc_dropout_samples = 2, 2
    jobs = deep_ensemble.member_jobs(config)
    assert [job.config.seed for job in jobs] == [0, 1] and "ensemble" not in jobs[0].config
    with pytest.raises(ValueError, match="not finished"):
        deep_ensemble.evaluate_ensemble(config)
    deep_ensemble.main(config, mode="all")
    results = deep_ensemble.read_results(config)
    assert results["ensemble"]["predictive"] == "ensemble" and results["ensemble"]["members"] == 2
    assert results["mc_dropout"]["predictive"] == "mc_dropout"
    # The ensemble's NLL recomputed from each member's softmax (members differ, so one member
    # counted twice would give another number).
    member_probs = []
    for job in jobs:
        run, state = load_trained(job.workdir)
        member_probs.append(scipy.special.softmax(predict(run, state.params, state.model_state, run.data.test), axis=1))
    assert np.abs(member_probs[0] - member_probs[1]).max() > 1e-3
    labels = run.data.test.labels
    expected_nll = -np.mean(np.log(np.mean(member_probs, axis=0)[np.arange(len(labels)), labels]))
    np.testing.assert_allclose(results["ensemble"]["test"]["nll"], expected_nll, rtol=1e-5)
    for member, probs in zip(results["members"], member_probs, strict=True):
        np.testing.assert_allclose(
            member["test"]["nll"], -np.mean(np.log(probs[np.arange(len(labels)), labels])), rtol=1e-5
        )
