"""The one predictive-averaging interface: trained runs -> predictive probabilities.

Every predictive method of the baselines is an average of softmax probabilities,
``p(y | x) = mean_j softmax(f_j(x))``, over some set of functions ``f_j``:

- a deep ensemble: the trained runs (Lakshminarayanan et al. 2016, arXiv:1612.01474);
- MC-dropout: dropout masks of one run (Gal & Ghahramani 2015, arXiv:1506.02142);
- a learned posterior: samples of the optimizer's posterior (bSAM, Möllenhoff & Khan 2022,
  arXiv:2210.01620, Sec. 5; VOGN, Osawa et al. 2019, arXiv:1906.02506; SWAG, Maddox et al. 2019,
  arXiv:1902.02476; mean-field VI), drawn by its ``OptimizerSpec.posterior_sample``. Where the spec
  asks for it (``recompute_batch_stats``: SWAG) and the model has BatchNorm, every sample gets its
  own running statistics, recomputed on the training set (:func:`recompute_batch_stats`);
- a multi-member model (BatchEnsemble, MIMO, rank-1 BNN): its members, averaged inside the
  evaluation step (``sam_jax.calibration.member_average_log_probs``).

:func:`make_predictive` composes them (e.g. an ensemble of bSAM runs, each with 32 posterior
samples) with ``sam_jax.calibration.predictive_average`` and returns probabilities that the
calibration suite consumes directly (``log`` of them acts as logits).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import calibration, data
from sam_jax.training.build import Run
from sam_jax.training.state import TrainState
from sam_jax.training.steps import ensemble_size, model_forward

Member = tuple[Run, TrainState]


def predictive_kind(members: Sequence[Member], posterior_samples: int = 0, mc_dropout_samples: int = 0) -> str:
    """What :func:`make_predictive` averages: ``posterior``, ``mc_dropout``, ``ensemble`` or ``point``."""
    if posterior_samples and members[0][0].optimizer.posterior_sample is not None:
        return "posterior"
    if mc_dropout_samples:
        return "mc_dropout"
    return "ensemble" if len(members) > 1 else "point"


def recompute_batch_stats(
    update: Callable[[Any, Any, jax.Array], Any], params: Any, model_state: Any, batches: Sequence[jax.Array]
) -> Any:
    """The running statistics of ``params`` as the plain average of their batch statistics over ``batches``.

    SWAG's predictive recomputes BatchNorm's statistics for every posterior sample with one pass
    over the training data in train mode, as a cumulative (equal-weight) average (Maddox et al.
    2019, arXiv:1902.02476, Sec. 4 and its ``bn_update``). BatchNorm's train-mode pass updates each
    running statistic as ``new = d old + (1 - d) b`` with the batch's statistic ``b`` and its decay
    ``d``; so a pass from zeros gives ``(1 - d) b`` and one from ones ``d + (1 - d) b``, and the
    average over ``T`` batches is the sum of the passes from zeros divided by ``T (1 - d)``, for
    any decay. Every leaf of ``model_state`` must update that way (BatchNorm's do). The result is as
    exact as the model's decay arithmetic: Flax multiplies the old value by its decay rounded to
    float32 and the batch's by ``1 - decay`` in full precision, which leaves a relative error of
    about 2e-7.

    Args:
      update: ``update(params, model_state, images) -> model_state`` after one train-mode pass.
      params: the parameters (one posterior sample).
      model_state: the trained model state (its structure and dtypes only are used).
      batches: the image batches to average over (full batches: a padded one would bias them).

    Returns:
      A model state like ``model_state``.
    """
    zeros = jax.tree.map(jnp.zeros_like, model_state)
    from_zeros = update(params, zeros, batches[0])
    decay = jax.tree.map(jnp.subtract, update(params, jax.tree.map(jnp.ones_like, model_state), batches[0]), from_zeros)
    total = from_zeros
    for images in batches[1:]:
        total = jax.tree.map(jnp.add, total, update(params, zeros, images))
    return jax.tree.map(lambda t, d: t / (len(batches) * (1 - d)), total, decay)


def _full_batches(images: np.ndarray, batch_size: int) -> list[jax.Array]:
    """``images`` in order as batches of ``batch_size`` (the whole set when smaller), remainder dropped."""
    size = min(batch_size, len(images))
    return [jnp.asarray(images[i : i + size]) for i in range(0, len(images) - size + 1, size)]


def make_predictive(
    members: Sequence[Member],
    *,
    posterior_samples: int = 0,
    mc_dropout_samples: int = 0,
    seed: int = 0,
    batch_size: int = 1000,
) -> Callable[[data.ArrayDataset], np.ndarray]:
    """``predict(dataset) -> probs [N, K]``: the average over members and, per member, over samples.

    Args:
      members: trained ``(run, state)`` pairs (one for a single run; several for a deep ensemble).
      posterior_samples: samples per member from the posterior of an optimizer that learns one
        (its spec's ``posterior_sample``: bSAM, VI); 0, or a point-estimate optimizer, predicts
        with the parameters themselves (the posterior mean).
      mc_dropout_samples: stochastic forward passes per member (train-mode dropout); 0 for none.
        Needs a model without BatchNorm state.
      seed: PRNG seed of the samples (dataset batches get keys folded from it).
      batch_size: evaluation batch size.

    Raises:
      ValueError: no member, or MC-dropout asked of a model with BatchNorm state.
    """
    if not members:
        raise ValueError("make_predictive needs at least one (run, state) member.")
    run = members[0][0]
    posterior_sample = run.optimizer.posterior_sample if posterior_samples > 0 else None
    if mc_dropout_samples and any(state.model_state for _, state in members):
        raise ValueError(
            "MC-dropout needs a model without BatchNorm state (its train mode would use "
            "batch statistics); set mc_dropout_samples=0."
        )
    num_train = len(run.data.train.labels)
    if posterior_sample is not None and run.optimizer.recompute_batch_stats and any(s.model_state for _, s in members):
        return _predictive_with_batch_stats(members, posterior_samples, seed, batch_size)

    def member_logits(member_run: Run, state: TrainState, images: jax.Array, key: jax.Array) -> jax.Array:
        def predict_with(params: object) -> jax.Array:
            return member_run.loss.predict(member_run.eval_step(params, state.model_state, images), state.loss_state)

        if posterior_sample is not None:

            def sample(k: jax.Array) -> jax.Array:
                return predict_with(posterior_sample(state.params, state.opt_state, k, num_train))

            return jnp.log(calibration.predictive_average(sample, key=key, num_samples=posterior_samples))
        if mc_dropout_samples:

            def dropout_pass(k: jax.Array) -> jax.Array:
                logits = model_forward(member_run.model, state.params, state.model_state, images, train=True, rng=k)[0]
                if ensemble_size(member_run.model):
                    logits = calibration.member_average_log_probs(logits)
                return member_run.loss.predict(logits, state.loss_state)

            return jnp.log(calibration.predictive_average(dropout_pass, key=key, num_samples=mc_dropout_samples))
        return predict_with(state.params)

    @jax.jit
    def batch_probs(states: Sequence[TrainState], images: jax.Array, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, len(members))
        return calibration.predictive_average(
            [
                lambda r=member_run, s=s, k=k: member_logits(r, s, images, k)
                for (member_run, _), s, k in zip(members, states, keys)
            ]
        )

    states = [state for _, state in members]

    def predict(dataset: data.ArrayDataset) -> np.ndarray:
        outputs, key = [], jax.random.PRNGKey(seed)
        for index, batch in enumerate(data.eval_batches(dataset, min(batch_size, len(dataset.labels)))):
            probs = batch_probs(states, jnp.asarray(batch["image"]), jax.random.fold_in(key, index))
            outputs.append(np.asarray(probs)[batch["mask"] > 0])
        return np.concatenate(outputs)

    return predict


def _predictive_with_batch_stats(
    members: Sequence[Member], posterior_samples: int, seed: int, batch_size: int
) -> Callable[[data.ArrayDataset], np.ndarray]:
    """:func:`make_predictive` for a posterior whose samples need their own BatchNorm statistics.

    Sample by sample (each is drawn once and predicts every batch): draw, recompute the running
    statistics on the member's training set in batches of its training batch size, predict.
    """

    def predict(dataset: data.ArrayDataset) -> np.ndarray:
        member_probs = []
        for index, (member_run, state) in enumerate(members):
            sample = jax.jit(member_run.optimizer.posterior_sample, static_argnums=3)
            num_train = len(member_run.data.train.labels)
            stats_key = jax.random.PRNGKey(seed)  # dropout during the statistics passes, if any

            @jax.jit
            def update(params: Any, model_state: Any, images: jax.Array, r=member_run, k=stats_key) -> Any:
                return model_forward(r.model, params, model_state, images, train=True, rng=k)[1]

            @jax.jit
            def batch_probs(params: Any, model_state: Any, images: jax.Array, r=member_run, s=state) -> jax.Array:
                return jax.nn.softmax(r.loss.predict(r.eval_step(params, model_state, images), s.loss_state))

            train = _full_batches(member_run.data.train.images, member_run.batch_size)
            total = 0.0
            for j in range(posterior_samples):
                key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), index), j)
                params = sample(state.params, state.opt_state, key, num_train)
                model_state = recompute_batch_stats(update, params, state.model_state, train)
                total = total + np.concatenate(
                    [
                        np.asarray(batch_probs(params, model_state, jnp.asarray(batch["image"])))[batch["mask"] > 0]
                        for batch in data.eval_batches(dataset, min(batch_size, len(dataset.labels)))
                    ]
                )
            member_probs.append(total / posterior_samples)
        return np.mean(member_probs, axis=0)

    return predict
