"""Wiring of the training objective: the loop's first steps with a non-default loss, a stateful loss,
mixup and MIT-L, and the posterior predictive of a bSAM / VI state, against references built by hand.

The tiny float64 problem of ``tests/test_wiring.py``: the run is built with ``build_run``, three
steps are taken with ``run.train_step`` on the batches the loop feeds, and the parameters (and
the loss and model state, the step metrics, the evaluation loss) are compared with the same steps
assembled from ``jax.grad`` of the registry's loss (``get_loss(name, **hparams)``), the public
mixing functions (``mixup``, ``mit_mix``, ``mit_loss``) and the posterior samplers
(``bsam_sample``, ``mean_field_vi_sample``). Every case sets hyper-parameters away from their
defaults and checks that the defaults would give other steps, so a value the loop dropped shows.
"""

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sam_jax import data, losses, models
from sam_jax.optim import OPTIMIZERS, bsam_sample, mean_field_vi_sample, sam
from sam_jax.training import build_run, evaluate, make_predictive
from sam_jax.training.steps import _MIXING_STREAM
from tests.test_wiring import (
    CASES_BY_NAME,
    COSINE,
    NUM_TRAIN,
    RUN_DATA,
    _as_float64,
    _sgd,
    assert_trees_close,
    loop_batches,
    loop_steps,
    tiny_config,
)

pytestmark = pytest.mark.usefixtures("float64")

SGD = dict(OPTIMIZERS["sgd"].defaults)  # the base every case below trains with
# Jitted once per hyper-parameter value: eager, every call would compile the Beta sampler's loops.
MIXUP = jax.jit(losses.mixup, static_argnames="alpha")
MIT_MIX = jax.jit(losses.mit_mix, static_argnames=("alpha", "margin"))


def _loss_config(name: str, hparams: Mapping[str, float], **fields: Any) -> ml_collections.ConfigDict:
    config = tiny_config("sgd", **fields)
    config.loss.name = name
    for field, value in hparams.items():
        config.loss[name][field] = value
    return config


def _sgd_steps(objective: Callable, params: Any, batches: list, step_state: Any = None, update_state=None):
    """Three SGD (momentum, cosine) steps of ``objective(params, batch, step, state) -> loss``;
    ``update_state(state, params, batch)`` advances a loss state after each step."""
    tx = _sgd(SGD, COSINE)

    @jax.jit  # one compilation instead of many eager float64 ops per step
    def step(params, opt_state, batch, t, step_state):
        grads = jax.grad(objective)(params, batch, t, step_state)
        if update_state is not None:
            step_state = update_state(step_state, params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, step_state

    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), params)  # off the run's mesh
    opt_state = tx.init(params)
    for t, batch in enumerate(batches):
        params, opt_state, step_state = step(params, opt_state, batch, t, step_state)
    return params, step_state


def _max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --------------------------------------------------------------------------- losses

# name -> non-default hyper-parameters (each changes the first steps: checked below).
LOSS_CASES = {
    "focal": {"gamma": 0.5},
    "label_smoothing": {"smoothing": 0.3},
    "mbls": {"margin": 0.05, "weight": 0.5},
    "adafocal": {"gamma_initial": 0.5},  # stateful; its epoch update runs in the loop, not in the step
    "crl": {"rank_weight": 0.5},  # stateful: the correctness history of every step
}


def _reference_loss_steps(run, init, batches, name: str, hparams: Mapping[str, float]):
    """Three steps on ``jax.grad`` of the registry loss; CRL's history advanced by ``crl_update``."""

    def logits_of(params, images):
        return run.model.apply({"params": params}, images)

    if name == "crl":

        def objective(params, batch, t, history):
            return losses.crl_loss(
                logits_of(params, batch["image"]), batch["label"], history, indices=batch["index"], **hparams
            )

        def update(history, params, batch):
            logits = logits_of(params, batch["image"])
            return losses.crl_update(history, logits, batch["label"], indices=batch["index"])

        return _sgd_steps(objective, init.params, batches, _as_float64(losses.crl_init(NUM_TRAIN)), update)
    loss_fn = losses.get_loss(name, **hparams)
    objective = lambda params, batch, t, state: loss_fn(logits_of(params, batch["image"]), batch["label"])
    return _sgd_steps(objective, init.params, batches)


def _take_steps(config: ml_collections.ConfigDict, num_steps: int):
    """The run built as the loop does and ``num_steps`` of its steps on the batches the loop feeds
    (epoch after epoch); (run, initial state, final state, batches)."""
    run = build_run(config, RUN_DATA)
    epochs = itertools.count()
    feed = itertools.chain.from_iterable(
        data.train_batches(run.data.train, run.batch_size, seed=config.seed, epoch=epoch) for epoch in epochs
    )
    batches = [{k: jnp.asarray(v) for k, v in batch.items()} for batch in itertools.islice(feed, num_steps)]
    state = init = _as_float64(run.init_state)
    for batch in batches:
        state, _ = run.train_step(state, batch)
    return run, init, state, batches


def _first_gradient(run, params, batch, loss_fn) -> Any:
    return jax.grad(lambda p: loss_fn(run.model.apply({"params": p}, batch["image"]), batch["label"]))(params)


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loop_trains_the_configured_loss_with_its_hyperparameters(name):
    hparams = LOSS_CASES[name]
    # Five steps: the fifth batch (epoch 1) holds examples that CRL's history has seen.
    run, init, state, batches = _take_steps(_loss_config(name, hparams), 5)
    params, history = _reference_loss_steps(run, init, batches, name, hparams)
    assert_trees_close(state.params, params)
    if history is not None:
        assert_trees_close(state.loss_state, history)
    # The evaluation's loss: the registry loss at the trained state, on the test logits.
    test = RUN_DATA.test
    logits = run.model.apply({"params": state.params}, jnp.asarray(test.images))
    expected = losses.get_loss(name, **hparams)(logits, jnp.asarray(test.labels))
    np.testing.assert_allclose(evaluate(run, state)["test/loss"], float(expected), rtol=1e-6)
    # The comparison sees a dropped value: each hyper-parameter at its default, and plain
    # cross-entropy, give another gradient (for CRL, on the last batch with the history before it).
    defaults = losses.loss_hparam_defaults(name)
    if name == "crl":
        before_last = _reference_loss_steps(run, init, batches[:-1], name, hparams)[1]
        loss_of = lambda hp: lambda z, y: losses.crl_loss(z, y, before_last, indices=batches[-1]["index"], **hp)
        point, batch = params, batches[-1]
    else:
        loss_of = lambda hp: losses.get_loss(name, **hp)
        point, batch = init.params, batches[0]
    gradient = _first_gradient(run, point, batch, loss_of(hparams))
    for other in [{**hparams, field: defaults[field]} for field in hparams]:
        assert _max_difference(_first_gradient(run, point, batch, loss_of(other)), gradient) > 1e-6, other
    assert _max_difference(_first_gradient(run, point, batch, losses.cross_entropy), gradient) > 1e-6


@pytest.mark.parametrize("optimizer", ["sam", "csam"])
def test_sharpness_aware_steps_use_the_configured_loss(optimizer):
    """SAM's ascent and descent gradients are those of the configured loss; CSAM ascends on it and
    descends on it reweighted per example by eq. (4)'s factor (Tan et al. 2025, arXiv:2505.23866)."""
    rho, gamma = 0.2, 1.5
    name, hparams = "focal", LOSS_CASES["focal"]
    block = {"rho": rho, "gamma": gamma} if optimizer == "csam" else {"rho": rho}
    config = _loss_config(name, hparams)
    config.optimizer.name = optimizer
    for field, value in block.items():
        config.optimizer[optimizer][field] = value
    run, init, state = loop_steps(config)
    loss_fn = losses.get_loss(name, **hparams)
    # CSAM descends on eq. (4)'s factor times the configured loss's per-example terms (FL+CSAM, Table S15).
    per_example = losses.get_per_example_loss(name, **hparams)
    descent_fn = losses.csam_reweighted(per_example, gamma) if optimizer == "csam" else loss_fn
    tx = sam(_sgd(SGD, COSINE), rho)

    def objective(fn):
        return lambda params, batch: fn(run.model.apply({"params": params}, batch["image"]), batch["label"])

    @jax.jit
    def reference_step(params, opt_state, batch):
        grad_fn = lambda p: jax.grad(objective(descent_fn))(p, batch)
        updates, opt_state = tx.update(jax.grad(objective(loss_fn))(params, batch), opt_state, params, grad_fn=grad_fn)
        return optax.apply_updates(params, updates), opt_state

    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), init.params)
    opt_state = tx.init(params)
    for batch in loop_batches(run, config):
        params, opt_state = reference_step(params, opt_state, batch)
    assert_trees_close(state.params, params)
    plain, _ = _reference_loss_steps(run, init, loop_batches(run, config), name, hparams)
    assert _max_difference(plain, params) > 1e-6  # the perturbation matters


# --------------------------------------------------------------------------- mixing


def _step_key(state_rng: jax.Array, step: int) -> jax.Array:
    """The mixing key of a step: ``fold_in(fold_in(rng, step), _MIXING_STREAM)``, as documented in
    ``sam_jax.training.steps`` (a resumed run must draw the same mix)."""
    return jax.random.fold_in(jax.random.fold_in(state_rng, step), _MIXING_STREAM)


def test_mixup_with_sam_mixes_once_per_step_for_both_passes():
    """SAM's ascent and descent gradients are taken on the same mixup batch, drawn from the step's key."""
    alpha, rho = 0.4, 0.2
    config = tiny_config("sam", {"sam": {"rho": rho}})
    config.mixing.name = "mixup"
    config.mixing.mixup.alpha = alpha
    run, init, state = loop_steps(config)
    batches = loop_batches(run, config)
    tx = sam(_sgd(SGD, COSINE), rho)

    @jax.jit
    def reference_step(params, opt_state, batch, key):
        mixed = losses.mixup(key, batch["image"], batch["label"], alpha=alpha)

        def objective(p):
            return losses.mixup_loss(losses.cross_entropy, run.model.apply({"params": p}, mixed.images), mixed)

        updates, opt_state = tx.update(jax.grad(objective)(params), opt_state, params, grad_fn=jax.grad(objective))
        return optax.apply_updates(params, updates), opt_state

    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), init.params)
    opt_state = tx.init(params)
    for t, batch in enumerate(batches):
        params, opt_state = reference_step(params, opt_state, batch, _step_key(init.rng, t))
    assert_trees_close(state.params, params)
    # Another alpha, another key or no mixing would have given other steps.
    batch = batches[0]
    mixed = MIXUP(_step_key(init.rng, 0), batch["image"], batch["label"], alpha=alpha)
    assert abs(mixed.lam - MIXUP(_step_key(init.rng, 0), batch["image"], batch["label"], alpha=1.0).lam) > 1e-3
    assert abs(mixed.lam - MIXUP(_step_key(init.rng, 1), batch["image"], batch["label"], alpha=alpha).lam) > 1e-3
    assert np.abs(mixed.images - batch["image"]).max() > 1e-3


class _BatchNormMLP(nn.Module):
    """Dense -> BatchNorm -> ReLU -> Dense, in float64: BatchNorm statistics of what the model sees."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Dense(8, dtype=jnp.float64)(x.reshape((x.shape[0], -1)))
        x = nn.BatchNorm(use_running_average=not train, momentum=0.8, dtype=jnp.float64)(x)
        return nn.Dense(self.num_classes, dtype=jnp.float64)(nn.relu(x))


def test_mit_trains_on_the_doubled_batch_and_reports_the_first_mixture(monkeypatch):
    """MIT-L: both mixtures in one forward pass (BatchNorm statistics of the doubled batch), the loss
    on the decoupled outputs, and the step's accuracy from the first mixture's logits."""
    monkeypatch.setitem(models.MODELS, "bn_mlp64", _BatchNormMLP)
    alpha, margin = 0.5, 0.6  # a margin that rejects some draws
    config = tiny_config("sgd")
    config.model.name, config.model.kwargs = "bn_mlp64", ml_collections.ConfigDict()
    config.mixing.name = "mit"
    config.mixing.mit.alpha, config.mixing.mit.margin = alpha, margin
    run = build_run(config, RUN_DATA)
    state = init = _as_float64(run.init_state)
    batches = loop_batches(run, config)
    accuracies = []
    for batch in batches:
        state, metrics = run.train_step(state, batch)
        accuracies.append(float(metrics["accuracy"]))

    def forward(params, batch_stats, images):
        return run.model.apply(
            {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
        )

    tx = _sgd(SGD, COSINE)

    @jax.jit
    def reference_step(params, batch_stats, opt_state, batch, key):
        mixed = losses.mit_mix(key, batch["image"], batch["label"], alpha=alpha, margin=margin)

        def objective(p):
            logits, updated = forward(p, batch_stats, jnp.concatenate([mixed.images_1, mixed.images_2]))
            logits_1, logits_2 = jnp.split(logits, 2)
            return losses.mit_loss(losses.cross_entropy, logits_1, logits_2, mixed), (logits_1, logits_2, updated)

        grads, (logits_1, logits_2, updated) = jax.grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        accuracy = [jnp.mean(jnp.argmax(z, -1) == batch["label"]) for z in (logits_1, logits_2)]
        return optax.apply_updates(params, updates), updated["batch_stats"], opt_state, accuracy

    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), init.params)
    batch_stats = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), init.model_state["batch_stats"])
    opt_state, first, second = tx.init(params), [], []
    for t, batch in enumerate(batches):
        params, batch_stats, opt_state, accuracy = reference_step(
            params, batch_stats, opt_state, batch, _step_key(init.rng, t)
        )
        first.append(float(accuracy[0]))
        second.append(float(accuracy[1]))
    assert_trees_close(state.params, params)
    assert_trees_close(state.model_state["batch_stats"], batch_stats)
    np.testing.assert_allclose(accuracies, first, rtol=1e-12)
    assert first != second  # the accuracy check tells the two mixtures apart

    # The draws depend on alpha and margin, and one forward pass per mixture would give other statistics.
    def draws(**hparams) -> np.ndarray:
        return np.array(
            [
                [float(x) for x in MIT_MIX(_step_key(init.rng, t), b["image"], b["label"], **hparams)[4:6]]
                for t, b in enumerate(batches)
            ]
        )

    chosen = draws(alpha=alpha, margin=margin)
    for other in ({"alpha": 1.0, "margin": margin}, {"alpha": alpha, "margin": 0.0}):
        assert np.abs(draws(**other) - chosen).max() > 1e-3, other
    mixed = MIT_MIX(_step_key(init.rng, 0), batches[0]["image"], batches[0]["label"], alpha=alpha, margin=margin)
    initial_stats = init.model_state["batch_stats"]
    alone = forward(init.params, initial_stats, mixed.images_1)[1]["batch_stats"]
    doubled = forward(init.params, initial_stats, jnp.concatenate([mixed.images_1, mixed.images_2]))[1]
    assert _max_difference(alone, doubled["batch_stats"]) > 1e-6


# --------------------------------------------------------------------------- posterior predictive

SAMPLERS = {"bsam": bsam_sample, "vi": mean_field_vi_sample}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_posterior_predictive_averages_samples_of_the_trained_posterior(name):
    """``make_predictive`` averages the softmax of samples drawn, at the documented keys, from the
    trained optimizer state with the run's N (not the initial state, not another N)."""
    (case,) = CASES_BY_NAME[name]
    config = tiny_config(name, case.overrides)
    run, init, state = loop_steps(config)
    seed, num_samples, batch_size = 5, 4, 8
    probs = make_predictive([(run, state)], posterior_samples=num_samples, seed=seed, batch_size=batch_size)(
        RUN_DATA.test
    )
    sample = SAMPLERS[name]

    def hand_average(opt_state: Any, num_train: int) -> np.ndarray:
        rows = []
        for index in range(len(RUN_DATA.test.labels) // batch_size):
            images = jnp.asarray(RUN_DATA.test.images[index * batch_size : (index + 1) * batch_size])
            (member_key,) = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), index), 1)
            draws = [
                jax.nn.softmax(run.model.apply({"params": sample(state.params, opt_state, key, num_train)}, images))
                for key in jax.random.split(member_key, num_samples)
            ]
            rows.append(np.mean(draws, axis=0))
        return np.concatenate(rows)

    expected = hand_average(state.opt_state, NUM_TRAIN)
    np.testing.assert_allclose(probs, expected, rtol=1e-9, atol=1e-12)
    assert np.abs(hand_average(init.opt_state, NUM_TRAIN) - expected).max() > 1e-6  # the initial posterior
    if name == "bsam":  # VI's sigma is learned directly: it does not read N
        assert np.abs(hand_average(state.opt_state, len(RUN_DATA.test.labels)) - expected).max() > 1e-6
