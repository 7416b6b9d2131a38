"""Bayesian SAM (bSAM) as an optax gradient transformation.

References:
  Möllenhoff & Khan, 2022. SAM as an Optimal Relaxation of Bayes. ICLR 2023, arXiv:2210.01620
  (Algorithm 1; App. E.3, eqs. 29-31).

bSAM learns a diagonal Gaussian posterior ``N(w, 1 / (N s))`` over the weights: ``w`` is the mean
(the parameters the optimizer returns updates for) and ``s`` the precision vector kept in the
state, which also adapts the step size. One step is Algorithm 1, lines 3-9:

    theta = w + e,  e ~ N(0, 1 / (N s))                       (line 3)
    g     = grad L(theta)                                     (line 4)
    eps   = rho * g / s                                       (line 5)
    g_eps = grad L(w + eps)                                   (line 6)
    gm    = beta1 gm + (1 - beta1) (g_eps + delta w)          (line 7)
    s     = beta2 s + (1 - beta2) (sqrt(s) |g| + delta + gamma)   (line 8)
    w     = w - alpha gm / s                                  (line 9, with the new s)

The learning rate ``alpha`` appears in line 9 only: lines 3-8 use ``rho``, ``beta1``, ``beta2``,
``delta`` and ``gamma`` but never ``alpha``. So ``scale_by_bsam`` returns the direction
``gm / s`` and ``optax.scale_by_learning_rate(alpha)`` turns it into ``-alpha gm / s``; the chain is
Algorithm 1 exactly, for a constant ``alpha`` and for a schedule of the step count.

``delta`` is the L2 regulariser and ``gamma`` the damping. The paper's prior is
``N(0, I / delta_0)`` with ``delta_0 = N delta`` (App. E.3) and its Tables 6-7 report ``N delta``;
the transformation therefore takes ``prior_precision = delta_0 = N delta`` and uses
``delta = prior_precision / num_data``.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.models.registry import NON_NEGATIVE, NON_NEGATIVE_INTEGER
from sam_jax.optim.gaussian import (
    POSTERIOR_RULES,
    average_precision,
    initial_posterior,
    perturb_by_posterior_noise,
    standard_normal_like,
)
from sam_jax.optim.hparams import check_hyper_parameters, with_learning_rate
from sam_jax.optim.states import find_state

GradFn = Callable[[optax.Params], optax.Updates]


class BSAMState(NamedTuple):
    """State of ``scale_by_bsam``."""

    key: jax.Array  # PRNG key for the weight noise of the next step (raw uint32 key)
    momentum: optax.Updates  # gm, moving average of g_eps + delta w (Alg. 1, line 7)
    precision: optax.Updates  # s, posterior precision per weight, divided by N (Alg. 1, line 8)


def bsam_sample(params: optax.Params, state: optax.OptState, key: jax.Array, num_data: int) -> optax.Params:
    """Draws one sample from the bSAM posterior ``N(w, 1 / (N s))``.

    Möllenhoff & Khan (2022, arXiv:2210.01620), Algorithm 1, line 11; the paper's predictive
    distribution averages the softmax of ``K = 32`` such samples.

    Args:
      params: posterior mean ``w`` (the trained parameters).
      state: the state of ``scale_by_bsam`` (``BSAMState``), or of any chain that contains it, such
        as ``bsam``'s.
      key: PRNG key for this sample.
      num_data: ``N``, the number of training examples (as given to ``scale_by_bsam``).

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: when ``state`` does not hold exactly one ``BSAMState``.
    """
    precision = find_state(
        state, BSAMState, "bsam_sample", "scale_by_bsam, bsam, or a chain containing one of them"
    ).precision
    return perturb_by_posterior_noise(params, precision, standard_normal_like(key, params), num_data)


# Algorithm 1's hyper-parameters and what each must be: checked by ``scale_by_bsam`` (and so by
# ``bsam``), and by the optimizer registry for a config's ``optimizer.bsam`` block.
RULES = {**POSTERIOR_RULES, "rho": NON_NEGATIVE, "num_sub_batches": NON_NEGATIVE_INTEGER}


def scale_by_bsam(
    rho: float,
    num_data: int,
    *,
    prior_precision: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    damping: float = 0.1,
    init_precision: float = 1.0,
    seed: int = 0,
    num_sub_batches: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Bayesian SAM without its learning rate: Algorithm 1, lines 3-8, returning ``gm / s``.

    Möllenhoff & Khan (2022), "SAM as an Optimal Relaxation of Bayes", arXiv:2210.01620,
    Algorithm 1 (eqs. 29-31 of App. E.3). Chain it with ``optax.scale_by_learning_rate(alpha)`` for
    line 9, ``w <- w - alpha gm / s``; ``alpha`` enters nowhere else, so any ``optax.Schedule`` of
    the step count works. ``bsam`` is that chain.

    ``update(grads, state, params, grad_fn=grad_fn)`` calls ``grad_fn`` twice, at the noisy sample
    ``theta`` (line 4) and at ``w + eps`` (line 6). ``grads`` is not used (it may be ``None``):
    Algorithm 1 never needs the gradient at ``w``. Consequently a transformation chained *before*
    ``scale_by_bsam`` (e.g. ``optax.clip_by_global_norm``) acts on ``grads`` only and has no effect
    on the step; chained *after* it, the transformation acts on the direction ``gm / s`` (clipping
    the step, as it would for Adam's output). To change the gradients bSAM takes, transform them in
    ``grad_fn``.

    Which gradient goes where (Algorithm 1 as printed): the precision (line 8) uses ``|g|`` at the
    noisy sample ``theta``; the momentum (line 7) uses ``g_eps`` at the perturbed mean plus the
    prior term ``delta w``. No bias correction is applied to ``gm`` (Algorithm 1 has none). Line 9
    divides by the *new* ``s``.

    Where this differs from the authors' code (team-approx-bayes/bayesian-sam), Algorithm 1 wins:
    the code divides by the precision *before* its update in line 9.

    m-sharpness (``num_sub_batches = S > 0``; the paper's experiments split each batch of 128 into
    S = 8 sub-batches, Sec. 5 and App. G.6/H): ``grad_fn`` then takes parameters stacked along a
    leading axis ``S`` and returns the stacked gradients of the ``S`` sub-batches (entry ``i`` on
    sub-batch ``i``, as for ``m_sharpness_sam``). Each sub-batch gets its own noise ``e_i`` (line 3),
    gradient ``g_i`` (line 4), perturbation ``eps_i = rho g_i / s`` (line 5) and ``g_eps_i`` (line 6);
    line 7 uses the mean of the ``g_eps_i`` and line 8 the mean of ``sqrt(s) |g_i|`` (a mean of
    absolute values, not the absolute value of a mean). With ``S = 1`` this is the unsplit step.

    The optional extra argument ``noise`` of ``update`` (a pytree like ``params`` of standard-normal
    draws ``z``, so that ``e = z / sqrt(N s)``) replaces the draw from the state's key; it is the
    test hook for comparing against a reference with the same noise. The key is split every step
    either way.

    Example::

      tx = optax.chain(
          scale_by_bsam(rho=0.01, num_data=60_000, prior_precision=25.0),
          optax.clip_by_global_norm(1.0),  # clips the step direction gm / s
          optax.scale_by_learning_rate(optax.cosine_decay_schedule(0.1, 10_000)),
      )
      state = tx.init(params)
      updates, state = tx.update(None, state, params, grad_fn=jax.grad(lambda p: loss(p, batch)))
      params = optax.apply_updates(params, updates)

    Args:
      rho: ``rho`` >= 0, step size of the adversarial perturbation ``eps = rho g / s`` (line 5).
      num_data: ``N`` > 0, training-set size; sets the noise scale ``1 / (N s)`` and ``delta``.
      prior_precision: ``delta_0 = N delta`` >= 0 of the prior ``N(0, I / delta_0)`` (the ``N delta``
        column of the paper's Tables 6-7; 25 for its CIFAR-10 runs). Required: there is no default
        that would silently tie it to a weight decay.
      beta1: momentum ``beta1`` in [0, 1) (line 7).
      beta2: precision averaging ``beta2`` in [0, 1) (line 8).
      damping: ``gamma`` >= 0 added to the precision (line 8; 0.1 in Algorithm 1).
      init_precision: initial ``s`` > 0 (line 1; 1 in Algorithm 1).
      seed: seed of the PRNG key stored in the state.
      num_sub_batches: ``S`` >= 0 sub-batches with their own noise and perturbation (m-sharpness);
        0 for none. With ``S > 0``, ``grad_fn`` and the ``noise`` hook are stacked along axis 0.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``BSAMState``; ``update`` needs ``params``
      and ``grad_fn``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    check_hyper_parameters(
        "bSAM",
        RULES,
        rho=rho,
        num_data=num_data,
        prior_precision=prior_precision,
        beta1=beta1,
        beta2=beta2,
        damping=damping,
        init_precision=init_precision,
        num_sub_batches=num_sub_batches,
    )
    delta = prior_precision / num_data
    stacked = num_sub_batches > 0

    def draw_noise(key: jax.Array, params: optax.Params) -> optax.Params:
        if not stacked:
            return standard_normal_like(key, params)
        return jax.vmap(standard_normal_like, (0, None))(jax.random.split(key, num_sub_batches), params)

    def mean_over_sub_batches(tree: optax.Updates) -> optax.Updates:
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree) if stacked else tree

    def init(params: optax.Params) -> BSAMState:
        return BSAMState(**initial_posterior(params, seed, init_precision))

    def update(
        grads: optax.Updates | None,
        state: BSAMState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        noise: optax.Params | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, BSAMState]:
        del grads, extra_args
        if params is None or grad_fn is None:
            raise ValueError(
                "bSAM needs params and grad_fn=<params -> gradient of the batch loss>: call "
                "tx.update(None, state, params, grad_fn=grad_fn)."
            )
        key, sample_key = jax.random.split(state.key)
        if noise is None:
            noise = draw_noise(sample_key, params)
        s = state.precision
        g = grad_fn(perturb_by_posterior_noise(params, s, noise, num_data))
        g_eps = mean_over_sub_batches(grad_fn(jax.tree.map(lambda w, gi, si: w + rho * gi / si, params, g, s)))
        g_scale = mean_over_sub_batches(jax.tree.map(lambda gi, si: jnp.sqrt(si) * jnp.abs(gi), g, s))
        momentum = jax.tree.map(
            lambda m, ge, w: beta1 * m + (1 - beta1) * (ge + delta * w), state.momentum, g_eps, params
        )
        precision = average_precision(s, g_scale, beta2=beta2, delta=delta, damping=damping)
        direction = jax.tree.map(jnp.divide, momentum, precision)
        return direction, BSAMState(key=key, momentum=momentum, precision=precision)

    return optax.GradientTransformationExtraArgs(init, update)


def bsam(
    learning_rate: optax.ScalarOrSchedule,
    rho: float,
    num_data: int,
    *,
    prior_precision: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    damping: float = 0.1,
    init_precision: float = 1.0,
    seed: int = 0,
    num_sub_batches: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Bayesian SAM, Algorithm 1 of Möllenhoff & Khan (2022, arXiv:2210.01620), with its learning rate.

    ``optax.chain(scale_by_bsam(rho, num_data, ...), optax.scale_by_learning_rate(learning_rate))``;
    see ``scale_by_bsam`` for the step, the arguments and the ``noise`` test hook. Its state is the
    chain's tuple; ``bsam_sample`` finds the ``BSAMState`` inside it.

    Example::

      tx = bsam(optax.cosine_decay_schedule(0.1, 10_000), rho=0.01, num_data=60_000,
                prior_precision=25.0)
      state = tx.init(params)
      updates, state = tx.update(None, state, params, grad_fn=jax.grad(lambda p: loss(p, batch)))
      params = optax.apply_updates(params, updates)

    Args:
      learning_rate: ``alpha`` > 0 of line 9, or an ``optax.Schedule`` of the step count (the paper
        anneals it with a cosine schedule, App. H).
      rho: see ``scale_by_bsam``.
      num_data: see ``scale_by_bsam``.
      prior_precision: see ``scale_by_bsam`` (required).
      beta1: see ``scale_by_bsam``.
      beta2: see ``scale_by_bsam``.
      damping: see ``scale_by_bsam``.
      init_precision: see ``scale_by_bsam``.
      seed: see ``scale_by_bsam``.
      num_sub_batches: see ``scale_by_bsam`` (m-sharpness).

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    return with_learning_rate(
        "bSAM",
        scale_by_bsam(
            rho,
            num_data,
            prior_precision=prior_precision,
            beta1=beta1,
            beta2=beta2,
            damping=damping,
            init_precision=init_precision,
            seed=seed,
            num_sub_batches=num_sub_batches,
        ),
        learning_rate,
    )
