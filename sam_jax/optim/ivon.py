"""Improved Variational Online Newton (IVON) as an optax gradient transformation.

References:
  Shen, Daheim, Cong, Nickl, Marconi, Bazan, Yokota, Gurevych, Cremers, Khan & Möllenhoff, 2024.
  Variational Learning is Effective for Large Deep Networks. ICML 2024, arXiv:2402.17641
  (Algorithm 1; App. A for the hyper-parameters).

IVON learns a diagonal Gaussian posterior ``q = N(m, diag(sigma^2))``: ``m`` is the mean (the
parameters the optimizer returns updates for), ``h`` a Hessian estimate and ``sigma`` the standard
deviation kept in the state. With effective sample size ``lam``, weight decay ``delta``, Hessian
initialisation ``h0`` and per-example loss ``l``, one step is Algorithm 1 (its updates numbered
here in order):

    init:  h = h0,  g = 0,  sigma = 1 / sqrt(lam (h + delta))
    g_hat = grad l(theta),  theta ~ q                                        (step 1)
    h_hat = g_hat (theta - m) / sigma^2                                      (step 2)
    g     = beta1 g + (1 - beta1) g_hat                                      (step 3)
    h     = beta2 h + (1 - beta2) h_hat
            + (1/2) (1 - beta2)^2 (h - h_hat)^2 / (h + delta)                (step 4)
    g_bar = g / (1 - beta1^t)                                                (step 5)
    m     = m - alpha_t (g_bar + delta m) / (h + delta)                      (step 6)
    sigma = 1 / sqrt(lam (h + delta))                                        (step 7)

``h_hat`` is the reparameterisation-trick (Price's theorem) estimate of the expected diagonal
Hessian from the one gradient at the sample; the last term of step 4 is the Riemannian-gradient
correction that keeps ``h + delta`` positive (``h + delta`` is multiplied by ``1 + x + x^2 / 2 > 0``
with ``x = (1 - beta2) (h_hat - h) / (h + delta)``). The learning rate ``alpha_t`` appears in step 6 only,
so ``scale_by_ivon`` returns ``(g_bar + delta m) / (h + delta)`` (clipped entrywise to
``[-xi, xi]`` when a clip radius ``xi`` is given) and ``ivon`` chains it with
``optax.scale_by_learning_rate``.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.models.registry import POSITIVE, UNIT_INTERVAL, Rule
from sam_jax.optim.hparams import check_hyper_parameters, with_learning_rate
from sam_jax.optim.sam import GradFn
from sam_jax.optim.states import find_state


class IVONState(NamedTuple):
    """State of ``scale_by_ivon``."""

    count: jax.Array  # steps taken; t - 1 of Algorithm 1 (the debiasing of step 5 uses t)
    key: jax.Array  # PRNG key for the weight noise of the next step (raw uint32 key)
    momentum: optax.Updates  # g, moving average of the sampled gradients (step 3)
    hessian: optax.Updates  # h, the Hessian estimate (step 4)
    std: optax.Updates  # sigma = 1 / sqrt(lam (h + delta)), the posterior standard deviation (step 7)


# Algorithm 1's hyper-parameters and what each must be: checked by ``scale_by_ivon`` (and so by
# ``ivon``); the optimizer registry checks a config's ``optimizer.ivon`` block against the same rules
# (there ``ess`` 0 stands for N and ``clip_radius`` 0 for no clipping).
RULES = {
    "ess": POSITIVE,
    "hess_init": POSITIVE,
    "beta1": UNIT_INTERVAL,
    "beta2": UNIT_INTERVAL,
    "weight_decay": POSITIVE,
    "clip_radius": Rule(POSITIVE.holds, "> 0 (math.inf for no clipping)"),
}


def ivon_sample(params: optax.Params, state: optax.OptState, key: jax.Array) -> optax.Params:
    """Draws one sample ``m + sigma z``, ``z ~ N(0, I)``, from the IVON posterior.

    Shen et al. (2024, arXiv:2402.17641): the posterior ``N(m, diag(sigma^2))`` that Algorithm 1
    returns; its predictions average the softmax over such samples (Bayesian model averaging).

    Args:
      params: posterior mean ``m`` (the trained parameters).
      state: the state of ``scale_by_ivon`` (``IVONState``), or of any chain containing it, such as
        ``ivon``'s.
      key: PRNG key for this sample.

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: when ``state`` does not hold exactly one ``IVONState``.
    """
    std = find_state(state, IVONState, "ivon_sample", "scale_by_ivon, ivon, or a chain containing one").std
    noise = optax.tree.random_like(key, params)
    return jax.tree.map(lambda m, s, z: m + s * z, params, std, noise)


def scale_by_ivon(
    ess: float,
    *,
    hess_init: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99999,
    weight_decay: float = 1e-4,
    clip_radius: float = math.inf,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """IVON without its learning rate: Algorithm 1, steps 1-7, returning ``(g_bar + delta m) / (h + delta)``.

    Shen et al. (2024), "Variational Learning is Effective for Large Deep Networks",
    arXiv:2402.17641, Algorithm 1. Chain it with ``optax.scale_by_learning_rate(alpha)`` for step 6;
    ``ivon`` is that chain.

    ``update(grads, state, params, grad_fn=grad_fn)`` calls ``grad_fn`` once, at the sample
    ``theta = m + sigma z`` (step 1); ``grad_fn`` must return the gradient of the batch's *mean*
    loss (the per-example ``l`` of the paper; the prior enters through ``delta`` only). ``grads``
    is not used (it may be ``None``). Line 2 is evaluated as ``g_hat z / sigma``, which equals
    ``g_hat (theta - m) / sigma^2`` without the cancellation of ``theta - m`` in floating point.
    The new ``sigma`` (step 7) is kept in the state, so the next step samples from it and
    ``ivon_sample`` needs no hyper-parameter.

    Clipping (``clip_radius = xi``), the paper's optional stabiliser: the preconditioned direction of
    step 6 is clipped entrywise to ``[-xi, xi]`` before the learning rate scales it, as the authors'
    ``ivon`` package does with its ``clip_radius``.

    Where the authors' package (``ivon.IVON``) differs: it multiplies the learning rate by
    ``h0 + delta`` so that the first step resembles an SGD step. Algorithm 1 wins here; pass
    ``learning_rate * (hess_init + weight_decay)`` to ``ivon`` for the package's step.

    The optional extra argument ``noise`` of ``update`` (a pytree like ``params`` of standard-normal
    draws ``z``) replaces the draw from the state's key; it is the test hook for comparing against a
    reference with the same noise. The key is split every step either way.

    Args:
      ess: ``lam`` > 0, the effective sample size (the training-set size ``N`` in Algorithm 1).
      hess_init: ``h0`` > 0, the initial Hessian estimate.
      beta1: gradient momentum in [0, 1) (step 3).
      beta2: Hessian momentum in [0, 1) (step 4).
      weight_decay: ``delta`` > 0 (the prior precision per example).
      clip_radius: ``xi`` > 0 of the entrywise clipping; ``math.inf`` for none.
      seed: seed of the PRNG key stored in the state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``IVONState``; ``update`` needs ``params``
      and ``grad_fn``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    check_hyper_parameters(
        "IVON",
        RULES,
        ess=ess,
        hess_init=hess_init,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        clip_radius=clip_radius,
    )

    def posterior_std(hessian: optax.Updates) -> optax.Updates:
        return jax.tree.map(lambda h: jax.lax.rsqrt(ess * (h + weight_decay)), hessian)

    def init(params: optax.Params) -> IVONState:
        hessian = optax.tree.full_like(params, hess_init)
        return IVONState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.PRNGKey(seed),
            momentum=optax.tree.zeros_like(params),
            hessian=hessian,
            std=posterior_std(hessian),
        )

    def update(
        grads: optax.Updates | None,
        state: IVONState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        noise: optax.Params | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, IVONState]:
        del grads, extra_args
        if params is None or grad_fn is None:
            raise ValueError(
                "IVON needs params and grad_fn=<params -> gradient of the batch's mean loss>: call "
                "tx.update(None, state, params, grad_fn=grad_fn)."
            )
        key, sample_key = jax.random.split(state.key)
        if noise is None:
            noise = optax.tree.random_like(sample_key, params)
        g_hat = grad_fn(jax.tree.map(lambda m, s, z: m + s * z, params, state.std, noise))
        h_hat = jax.tree.map(lambda g, z, s: g * z / s, g_hat, noise, state.std)
        momentum = jax.tree.map(lambda g, gh: beta1 * g + (1 - beta1) * gh, state.momentum, g_hat)
        hessian = jax.tree.map(
            lambda h, hh: beta2 * h + (1 - beta2) * hh + 0.5 * (1 - beta2) ** 2 * (h - hh) ** 2 / (h + weight_decay),
            state.hessian,
            h_hat,
        )
        count = optax.safe_increment(state.count)

        def preconditioned(g: jax.Array, h: jax.Array, m: jax.Array) -> jax.Array:
            g_bar = g / (1 - beta1 ** count.astype(g.dtype))
            return jnp.clip((g_bar + weight_decay * m) / (h + weight_decay), -clip_radius, clip_radius)

        direction = jax.tree.map(preconditioned, momentum, hessian, params)
        return direction, IVONState(count, key, momentum, hessian, posterior_std(hessian))

    return optax.GradientTransformationExtraArgs(init, update)


def ivon(
    learning_rate: optax.ScalarOrSchedule,
    ess: float,
    *,
    hess_init: float = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.99999,
    weight_decay: float = 1e-4,
    clip_radius: float = math.inf,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """IVON, Algorithm 1 of Shen et al. (2024, arXiv:2402.17641), with its learning rate.

    ``optax.chain(scale_by_ivon(ess, ...), optax.scale_by_learning_rate(learning_rate))``; see
    ``scale_by_ivon`` for the step, the arguments and the ``noise`` test hook. The defaults of
    ``hess_init``, ``beta1``, ``beta2``, ``weight_decay`` and ``clip_radius`` are those of the
    authors' ``ivon`` package; App. A of the paper discusses how to choose them (``beta2`` close to
    1, a small ``h0``, a learning rate of SGD's order rather than Adam's). ``ivon_sample`` draws
    from the learned posterior.

    Example::

      tx = ivon(optax.cosine_decay_schedule(0.2, 10_000), ess=50_000, hess_init=0.5)
      state = tx.init(params)
      updates, state = tx.update(None, state, params, grad_fn=jax.grad(lambda p: mean_nll(p, batch)))
      params = optax.apply_updates(params, updates)
      sample = ivon_sample(params, state, jax.random.PRNGKey(0))

    Args:
      learning_rate: ``alpha_t`` > 0 of step 6, or an ``optax.Schedule`` of the step count.
      ess: see ``scale_by_ivon``.
      hess_init: see ``scale_by_ivon``.
      beta1: see ``scale_by_ivon``.
      beta2: see ``scale_by_ivon``.
      weight_decay: see ``scale_by_ivon``.
      clip_radius: see ``scale_by_ivon``.
      seed: see ``scale_by_ivon``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    return with_learning_rate(
        "IVON",
        scale_by_ivon(
            ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            clip_radius=clip_radius,
            seed=seed,
        ),
        learning_rate,
    )
