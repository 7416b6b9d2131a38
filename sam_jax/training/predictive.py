"""The one predictive-averaging interface: trained runs -> predictive probabilities.

Every predictive method of the baselines is an average of softmax probabilities,
``p(y | x) = mean_j softmax(f_j(x))``, over some set of functions ``f_j``:

- a deep ensemble: the trained runs (Lakshminarayanan et al. 2017, arXiv:1612.01474);
- MC-dropout: dropout masks of one run (Gal & Ghahramani 2016, arXiv:1506.02142);
- a learned posterior: samples of the optimizer's posterior (bSAM, Möllenhoff & Khan 2023,
  arXiv:2210.01620, Sec. 5; mean-field VI), drawn by its ``OptimizerSpec.posterior_sample``;
- a multi-member model (BatchEnsemble, MIMO, rank-1 BNN): its members, averaged inside the
  evaluation step (``sam_jax.calibration.member_average_log_probs``).

:func:`make_predictive` composes them (e.g. an ensemble of bSAM runs, each with 32 posterior
samples) with ``sam_jax.calibration.predictive_average`` and returns probabilities that the
calibration suite consumes directly (``log`` of them acts as logits).
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sam_jax import calibration, data
from sam_jax.training.loop import Run
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
