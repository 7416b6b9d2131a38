"""Predictive distributions that average members: ensembles, samples, multi-member models.

Deep ensembles, MC-dropout, posterior samples (bSAM, mean-field VI) and the members of one
multi-member model (BatchEnsemble, MIMO, Rank-1 BNN, whose logits carry a member axis ``[N, M, K]``)
all approximate ``p(y | x, D)`` by an average of softmax probabilities (Möllenhoff & Khan 2022,
Sec. 5: 32 samples from the bSAM posterior; Tan et al. 2025, Table 1: ensembles and MC-dropout of
size 5; Wen et al. 2020, Havasi et al. 2020, Dusenberry et al. 2020: the mean over members).

References:
  Möllenhoff & Khan, 2022. SAM as an Optimal Relaxation of Bayes. ICLR 2023, arXiv:2210.01620.
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

LogitFn = Callable[[], jax.Array]
SampleLogitFn = Callable[[jax.Array], jax.Array]


def member_average_log_probs(logits: jax.Array) -> jax.Array:
    """``log mean_m softmax(logits[:, m])``: the ensembling rule of a model with a member axis.

    Args:
      logits: ``[N, M, K]`` logits of ``M`` members.

    Returns:
      ``[N, K]`` log-probabilities of the members' average prediction (usable wherever logits are).
    """
    if logits.ndim != 3:
        raise ValueError(f"member_average_log_probs: expected logits [N, M, K], got shape {logits.shape}.")
    return jax.nn.logsumexp(jax.nn.log_softmax(logits, axis=-1), axis=1) - jnp.log(logits.shape[1])


def predictive_average(
    logit_fns: Sequence[LogitFn] | SampleLogitFn,
    *,
    key: jax.Array | None = None,
    num_samples: int | None = None,
) -> jax.Array:
    """Averages softmax probabilities over ensemble members or random samples.

    Two forms:

    * Deep ensemble: ``logit_fns`` is a sequence of zero-argument callables, one per member,
      each returning ``[N, K]`` logits (e.g. ``lambda: apply_fn(params_i, x)``).
    * Sampled models: ``logit_fns`` is one callable ``sample_logits(key) -> [N, K]`` and ``key``
      and ``num_samples`` are given. It is called with ``num_samples`` independent keys inside a
      ``fori_loop`` (memory of one sample). For MC-dropout, ``sample_logits = lambda k:
      model.apply(variables, x, train=True, rngs={"dropout": k})``; for bSAM,
      ``lambda k: apply_fn(bsam_sample(params, state, k, num_data), x)``.

    Args:
      logit_fns: a sequence of ``() -> logits`` or one ``(key) -> logits``.
      key: PRNG key for the sampled form.
      num_samples: number of samples ``S >= 1`` for the sampled form.

    Returns:
      ``[N, K]`` averaged probabilities.
    """
    if callable(logit_fns):
        if key is None or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(
                "predictive_average: a single sample_logits(key) callable needs "
                f"key=<PRNG key> and num_samples=<int >= 1>, got key={key!r}, "
                f"num_samples={num_samples!r}; pass a list of () -> logits "
                "callables for an ensemble."
            )
        keys = jax.random.split(key, num_samples)
        first = jax.nn.softmax(logit_fns(keys[0]), axis=-1)
        total = jax.lax.fori_loop(
            1, num_samples, lambda i, acc: acc + jax.nn.softmax(logit_fns(keys[i]), axis=-1), first
        )
        return total / num_samples
    members = list(logit_fns)
    if not members or not all(callable(fn) for fn in members):
        raise ValueError(
            "predictive_average: expected a non-empty sequence of () -> logits "
            "callables or a single sample_logits(key) callable."
        )
    if key is not None or num_samples is not None:
        raise ValueError(
            "predictive_average: key and num_samples apply only to a single "
            "sample_logits(key) callable, not to an ensemble list."
        )
    total = jax.nn.softmax(members[0](), axis=-1)
    for logit_fn in members[1:]:
        total = total + jax.nn.softmax(logit_fn(), axis=-1)
    return total / len(members)
