"""SWAG, the SWA-Gaussian posterior collected along an SGD trajectory, as an optax wrapper.

References:
  Maddox, Garipov, Izmailov, Vetrov & Wilson, 2019. A Simple Baseline for Bayesian Uncertainty in
  Deep Learning. NeurIPS 2019, arXiv:1902.02476 (Sec. 4, Algorithm 1).
  Möllenhoff & Khan, 2022. SAM as an Optimal Relaxation of Bayes. ICLR 2023, arXiv:2210.01620
  (App. H: SWAG as a Table 1 baseline, rank 20, one snapshot every 100 steps).

``swag(base, start_step=T0, collect_every=c, rank=K)`` leaves the base optimizer's updates
unchanged and, after every ``c``-th step past ``T0``, collects the new parameters ``theta_i`` as a
snapshot (Algorithm 1 of Maddox et al.), updating

    theta_bar   <- (n theta_bar + theta_i) / (n + 1)           first moment
    theta2_bar  <- (n theta2_bar + theta_i^2) / (n + 1)        second moment
    D[:, i mod K] <- theta_i - theta_bar                        deviation, with the updated mean

so that ``D`` holds the last ``K`` deviations (a ring buffer). The posterior is the Gaussian with mean
``theta_bar`` and covariance ``(Sigma_diag + D D^T / (K' - 1)) / 2``, ``Sigma_diag = diag(theta2_bar -
theta_bar^2)`` and ``K' = min(n, K)`` columns in use; ``swag_sample`` draws from it as Maddox et al.
do (Sec. 4),

    theta~ = theta_bar + Sigma_diag^(1/2) z1 / sqrt(2) + D z2 / sqrt(2 (K' - 1)),   z1, z2 ~ N(0, I).

Maddox et al. collect with a constant (SWA) learning rate; that rate is the base optimizer's
business (``sam_jax.optim.OPTIMIZERS``' ``swag`` entry switches its schedule at ``start_step``).
"""

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.optim.gaussian import standard_normal_like
from sam_jax.optim.states import find_state


class SWAGState(NamedTuple):
    """State of ``swag``."""

    base_state: optax.OptState  # state of the wrapped base optimizer
    count: jax.Array  # optimizer steps taken (int32)
    num_collected: jax.Array  # snapshots collected so far, n (int32)
    mean: optax.Params  # theta_bar, mean of the snapshots (zeros before the first)
    sq_mean: optax.Params  # theta2_bar, mean of their squares
    deviations: optax.Params  # leaves [rank, ...]: theta_i - theta_bar after snapshot i, in slot i mod rank


def swag(
    base: optax.GradientTransformation, *, start_step: int, collect_every: int = 100, rank: int = 20
) -> optax.GradientTransformationExtraArgs:
    """Collects SWAG's moments and deviation matrix (Maddox et al. 2019, arXiv:1902.02476, Algorithm 1).

    The updates are ``base``'s, unchanged; the wrapper only watches the parameters they lead to.
    After step ``t`` (counted from 1) with ``t > start_step`` and ``(t - start_step) % collect_every ==
    0`` it collects ``params + updates`` as a snapshot. Extra arguments (``grad_fn``) go to ``base``.

    Example::

      schedule = optax.join_schedules(
          [optax.cosine_decay_schedule(0.1, 28_080), optax.constant_schedule(0.01)], [28_080])
      tx = swag(optax.sgd(schedule, momentum=0.95), start_step=28_080, collect_every=100, rank=20)
      ...  # train; then
      theta = swag_sample(params, state, key, num_data)

    Args:
      base: the optimizer that moves the parameters (SGD in Maddox et al. and Möllenhoff & Khan).
      start_step: steps before the first collection window (the pre-training phase), >= 0.
      collect_every: steps between snapshots, > 0 (100 in Möllenhoff & Khan, App. H).
      rank: ``K`` > 0, columns of the deviation matrix (20 in both papers).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``SWAGState``; ``update`` needs ``params``.

    Raises:
      ValueError: for out-of-range arguments.
    """
    checks = {
        "start_step must be an integer >= 0": isinstance(start_step, numbers.Integral) and start_step >= 0,
        "collect_every must be a positive integer": isinstance(collect_every, numbers.Integral) and collect_every > 0,
        "rank must be a positive integer": isinstance(rank, numbers.Integral) and rank > 0,
    }
    failed = [message for message, ok in checks.items() if not ok]
    if failed:
        raise ValueError(
            f"Bad SWAG arguments: {'; '.join(failed)} "
            f"(got start_step={start_step}, collect_every={collect_every}, rank={rank})."
        )
    base = optax.with_extra_args_support(base)

    def init(params: optax.Params) -> SWAGState:
        return SWAGState(
            base_state=base.init(params),
            count=jnp.zeros((), jnp.int32),
            num_collected=jnp.zeros((), jnp.int32),
            mean=optax.tree.zeros_like(params),
            sq_mean=optax.tree.zeros_like(params),
            deviations=jax.tree.map(lambda p: jnp.zeros((rank, *p.shape), p.dtype), params),
        )

    def collect(state: SWAGState, theta: optax.Params) -> SWAGState:
        n = state.num_collected
        mean = jax.tree.map(lambda m, x: m + (x - m) / (n + 1).astype(x.dtype), state.mean, theta)
        sq_mean = jax.tree.map(lambda q, x: q + (x * x - q) / (n + 1).astype(x.dtype), state.sq_mean, theta)
        deviations = jax.tree.map(lambda d, x, m: d.at[n % rank].set(x - m), state.deviations, theta, mean)
        return state._replace(num_collected=n + 1, mean=mean, sq_mean=sq_mean, deviations=deviations)

    def update(
        grads: optax.Updates, state: SWAGState, params: optax.Params = None, **extra_args
    ) -> tuple[optax.Updates, SWAGState]:
        if params is None:
            raise ValueError("SWAG collects the parameters: call tx.update(grads, state, params, ...).")
        updates, base_state = base.update(grads, state.base_state, params, **extra_args)
        count = state.count + 1
        state = state._replace(base_state=base_state, count=count)
        due = (count > start_step) & ((count - start_step) % collect_every == 0)
        state = jax.lax.cond(due, collect, lambda s, _: s, state, optax.apply_updates(params, updates))
        return updates, state

    return optax.GradientTransformationExtraArgs(init, update)


def swag_sample(params: optax.Params, state: optax.OptState, key: jax.Array, num_data: int) -> optax.Params:
    """Draws one sample of SWAG's diagonal-plus-low-rank Gaussian (Maddox et al. 2019, Sec. 4).

    ``theta_bar + Sigma_diag^(1/2) z1 / sqrt(2) + D z2 / sqrt(2 (K' - 1))`` with the ``K' = min(n,
    rank)`` deviation columns collected so far (``K' - 1`` floored at 1); the diagonal variance
    ``theta2_bar - theta_bar^2`` is clipped at 0 against rounding. Before the first snapshot the
    posterior is the point mass at ``params``. The signature is that of every registry
    ``posterior_sample``; ``num_data`` is not used (SWAG's scale comes from the trajectory).

    Args:
      params: the trained parameters (returned as they are before any snapshot).
      state: the state of ``swag`` (``SWAGState``) or of a chain that contains it.
      key: PRNG key for this sample.
      num_data: unused.

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: when ``state`` does not hold exactly one ``SWAGState``.
    """
    del num_data
    state = find_state(state, SWAGState, "swag_sample", "swag or a chain containing it")
    rank = jax.tree.leaves(state.deviations)[0].shape[0]
    columns = jnp.minimum(state.num_collected, rank)
    diag_key, low_rank_key = jax.random.split(key)
    z1 = standard_normal_like(diag_key, params)
    z2 = jax.random.normal(low_rank_key, (rank,)) * (jnp.arange(rank) < columns)
    low_rank_dof = 2 * jnp.maximum(columns - 1, 1)

    def leaf_sample(mean: jax.Array, sq_mean: jax.Array, deviations: jax.Array, z: jax.Array) -> jax.Array:
        dtype = mean.dtype
        std = jnp.sqrt(jnp.maximum(sq_mean - mean * mean, 0.0))
        low_rank = jnp.tensordot(z2.astype(dtype), deviations, axes=1)
        return mean + std * z * jnp.sqrt(0.5).astype(dtype) + low_rank * jax.lax.rsqrt(low_rank_dof.astype(dtype))

    sample = jax.tree.map(leaf_sample, state.mean, state.sq_mean, state.deviations, z1)
    return jax.tree.map(lambda s, p: jnp.where(state.num_collected > 0, s, p), sample, params)
