"""Variational Online Gauss-Newton (VOGN) as an optax gradient transformation.

References:
  Osawa, Swaroop, Jain, Eschenhagen, Turner, Yokota & Khan, 2019. Practical Deep Learning with
  Bayesian Principles. NeurIPS 2019, arXiv:1906.02506 (Algorithm 1; Sec. 3 for momentum, the
  external damping and the distributed Monte-Carlo samples).
  Khan, Nielsen, Tangkaratt, Lin, Gal & Srivastava, 2018. Fast and Scalable Bayesian Deep Learning
  by Weight-Perturbation in Adam. ICML 2018, arXiv:1806.04854 (VOGN's natural-gradient update).
  Möllenhoff & Khan, 2022. SAM as an Optimal Relaxation of Bayes. ICLR 2023, arXiv:2210.01620
  (App. H and Table 6: VOGN's setting as a Table 1 baseline, m = 16 sub-batches per batch).

VOGN learns a diagonal Gaussian posterior ``N(mu, 1 / (N p))``: ``mu`` is the mean (the parameters
the optimizer returns updates for) and ``p = s + delta + gamma`` the precision divided by ``N``,
where ``s`` is the running average of the Gauss-Newton diagonal, ``delta = N delta / N`` the prior
precision per example and ``gamma`` the external damping. One step is Algorithm 1 of Osawa et al.
with no tempering and no data-augmentation factor (``tau = rho = 1``):

    theta_j = mu + e_j,  e_j ~ N(0, 1 / (N p))              one draw per sub-batch j   (lines 4-5)
    g_i     = grad l_i(theta_j(i))                           per-example gradients      (line 6)
    g_hat   = mean_i g_i,   h_hat = mean_i g_i * g_i         Gauss-Newton diagonal      (lines 7-8)
    m       = beta1 m + (g_hat + delta mu)                   momentum                   (line 9)
    s       = beta2 s + (1 - beta2) h_hat                                               (line 10)
    mu      = mu - alpha m / (s + delta + gamma)                                        (line 11)

The state keeps ``p = s + delta + gamma`` rather than ``s``: since ``delta`` and ``gamma`` are
constant, line 10 is ``p = beta2 p + (1 - beta2) (h_hat + delta + gamma)``, the form of bSAM's
line 8, and ``p`` is what both the step (line 11) and the posterior (``1 / (N p)``, line 5, and
prediction) use. ``beta2`` is the decay of that average (Table 6 of Möllenhoff & Khan lists 0.999
and 0.99), so the weight of ``h_hat`` is ``1 - beta2``. ``init_precision`` is the initial ``p``
(``s_0 = p_0 - delta - gamma``). The momentum adds ``g_hat + delta mu``
without a ``1 - beta1`` factor (Algorithm 1, line 9, as for heavy-ball SGD); its learning rate
``alpha`` therefore compares with SGD's, not Adam's.

``h_hat`` is the mean of squared *per-example* gradients (the diagonal of the generalised
Gauss-Newton matrix of the negative log-likelihood), not the square of the batch gradient. The
examples form ``S`` sub-batches of ``B / S`` examples, each evaluated at its own weight sample
``theta_j`` (the independent Monte-Carlo samples of Osawa et al.'s distributed VOGN; Möllenhoff &
Khan use ``S = 16`` sub-batches of a batch of 128). ``grad_fn`` takes the ``S`` samples stacked and
returns, per sub-batch, the two moments that lines 7-8 average: the mean of its examples' gradients
and the mean of their squares. It never has to hold ``B`` per-example gradients at once.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.models.registry import POSITIVE_INTEGER
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


class VOGNState(NamedTuple):
    """State of ``scale_by_vogn``."""

    key: jax.Array  # PRNG key for the weight noise of the next step (raw uint32 key)
    momentum: optax.Updates  # m, heavy-ball momentum of g_hat + delta mu (line 9)
    precision: optax.Updates  # p = s + delta + gamma, posterior precision per weight divided by N


def vogn_sample(params: optax.Params, state: optax.OptState, key: jax.Array, num_data: int) -> optax.Params:
    """Draws one sample from the VOGN posterior ``N(mu, 1 / (N p))``.

    Osawa et al. (2019, arXiv:1906.02506), Algorithm 1, line 5 (and Sec. 4: predictions average the
    softmax over such samples; Möllenhoff & Khan 2022 use 32).

    Args:
      params: posterior mean ``mu`` (the trained parameters).
      state: the state of ``scale_by_vogn`` (``VOGNState``) or of a chain that contains it.
      key: PRNG key for this sample.
      num_data: ``N``, the number of training examples (as given to ``scale_by_vogn``).

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: when ``state`` does not hold exactly one ``VOGNState``.
    """
    precision = find_state(state, VOGNState, "vogn_sample", "scale_by_vogn, vogn, or a chain containing one").precision
    return perturb_by_posterior_noise(params, precision, standard_normal_like(key, params), num_data)


# VOGN's hyper-parameters and what each must be (``num_samples`` must also divide ``batch_size``):
# checked by ``scale_by_vogn`` (and so by ``vogn``), and by the optimizer registry for a config's
# ``optimizer.vogn`` block.
RULES = {**POSTERIOR_RULES, "batch_size": POSITIVE_INTEGER, "num_samples": POSITIVE_INTEGER}


def scale_by_vogn(
    num_data: int,
    batch_size: int,
    *,
    prior_precision: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    damping: float = 0.0,
    init_precision: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """VOGN without its learning rate: Algorithm 1 of Osawa et al. (2019), lines 4-10, returning ``m / p``.

    Osawa et al. (2019), "Practical Deep Learning with Bayesian Principles", arXiv:1906.02506. Chain
    it with ``optax.scale_by_learning_rate(alpha)`` for line 11, ``mu <- mu - alpha m / p``; ``vogn``
    is that chain. See the module docstring for the step and the meaning of ``p``.

    ``update(grads, state, params, grad_fn=grad_fn)`` calls ``grad_fn`` once with parameters stacked
    along a leading axis of ``num_samples`` (entry ``j`` is the weight sample of sub-batch ``j``,
    the examples ``j * B / S, ..., (j + 1) * B / S - 1``) and expects ``(mean, mean_of_squares)``
    back, each stacked ``[num_samples, ...]``: entry ``j`` the mean over sub-batch ``j``'s examples of
    their loss gradients at sample ``j``, and of those gradients squared (``sam_jax.training`` gives
    such a ``grad_fn`` to an optimizer registered with ``per_example_moments``). ``grads`` is not
    used (it may be ``None``).

    The optional extra argument ``noise`` of ``update`` (a pytree like ``params`` with a leading axis
    ``num_samples`` of standard-normal draws ``z``, so that ``e_j = z_j / sqrt(N p)``) replaces the
    draw from the state's key; it is the test hook for comparing against a reference with the same
    noise. The key is split every step either way.

    Example::

      example_grads = jax.vmap(jax.grad(lambda p, x, y: loss(p, x[None], y[None])), (None, 0, 0))

      def moments(p, x, y):  # one sub-batch at its own weight sample
          g = example_grads(p, x, y)
          return jax.tree.map(lambda gi: gi.mean(0), g), jax.tree.map(lambda gi: (gi * gi).mean(0), g)

      tx = optax.chain(
          scale_by_vogn(60_000, 128, prior_precision=25.0, beta1=0.95, damping=0.05, num_samples=16),
          optax.scale_by_learning_rate(optax.cosine_decay_schedule(5e-4, 35_000)),
      )
      state = tx.init(params)
      grad_fn = lambda stacked: jax.vmap(moments)(stacked, images.reshape(16, 8, -1), labels.reshape(16, 8))
      updates, state = tx.update(None, state, params, grad_fn=grad_fn)
      params = optax.apply_updates(params, updates)

    Args:
      num_data: ``N`` > 0, training-set size; sets the noise scale ``1 / (N p)`` and ``delta``.
      batch_size: ``B`` > 0, examples per step (the leading axis of ``grad_fn``'s input and output).
      prior_precision: ``N delta`` >= 0 of the prior ``N(0, I / (N delta))`` (the ``N delta`` column of
        Möllenhoff & Khan's Table 6; 25 for VOGN there). Required: no default ties it to a weight decay.
      beta1: momentum ``beta1`` in [0, 1) (line 9).
      beta2: decay ``beta2`` in [0, 1) of the Gauss-Newton average (line 10).
      damping: external damping ``gamma`` >= 0 (Osawa et al., Sec. 3; Table 6: 0.05 for MNIST and
        Fashion-MNIST, 0.01 for CIFAR).
      init_precision: initial ``p`` > 0 (line 1), the posterior precision at the start divided by
        ``N``. Neither Osawa et al. nor Table 6 give the value for these runs; the default 1 is
        bSAM's initial precision (Möllenhoff & Khan, Algorithm 1, line 1). ``p`` forgets it as
        ``beta2^t``.
      num_samples: ``S`` > 0 independent weight samples per step, one per sub-batch of
        ``batch_size / S`` consecutive examples; must divide ``batch_size``.
      seed: seed of the PRNG key stored in the state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``VOGNState``; ``update`` needs ``params``
      and ``grad_fn``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    check_hyper_parameters(
        "VOGN",
        RULES,
        num_data=num_data,
        batch_size=batch_size,
        prior_precision=prior_precision,
        beta1=beta1,
        beta2=beta2,
        damping=damping,
        init_precision=init_precision,
        num_samples=num_samples,
    )
    if batch_size % num_samples:
        raise ValueError(f"Bad VOGN hyper-parameters: num_samples={num_samples} must divide batch_size={batch_size}.")
    delta = prior_precision / num_data

    def init(params: optax.Params) -> VOGNState:
        return VOGNState(**initial_posterior(params, seed, init_precision))

    def update(
        grads: optax.Updates | None,
        state: VOGNState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        noise: optax.Params | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, VOGNState]:
        del grads, extra_args
        if params is None or grad_fn is None:
            raise ValueError(
                "VOGN needs params and grad_fn=<stacked params -> per-example gradient moments>: call "
                "tx.update(None, state, params, grad_fn=grad_fn)."
            )
        key, sample_key = jax.random.split(state.key)
        if noise is None:
            noise = jax.vmap(standard_normal_like, (0, None))(jax.random.split(sample_key, num_samples), params)
        g_mean, g_square_mean = grad_fn(perturb_by_posterior_noise(params, state.precision, noise, num_data))
        leading = {x.shape[0] for x in jax.tree.leaves((g_mean, g_square_mean))}
        if leading != {num_samples}:
            raise ValueError(
                f"VOGN's grad_fn must return (mean, mean of squares) of the per-example gradients, "
                f"stacked over the {num_samples} weight samples; got leading axes {sorted(leading)}."
            )
        g_hat = jax.tree.map(lambda g: jnp.mean(g, axis=0), g_mean)  # equal sub-batches: the batch mean
        h_hat = jax.tree.map(lambda h: jnp.mean(h, axis=0), g_square_mean)
        momentum = jax.tree.map(lambda m, gh, w: beta1 * m + gh + delta * w, state.momentum, g_hat, params)
        precision = average_precision(state.precision, h_hat, beta2=beta2, delta=delta, damping=damping)
        direction = jax.tree.map(jnp.divide, momentum, precision)
        return direction, VOGNState(key=key, momentum=momentum, precision=precision)

    return optax.GradientTransformationExtraArgs(init, update)


def vogn(
    learning_rate: optax.ScalarOrSchedule,
    num_data: int,
    batch_size: int,
    *,
    prior_precision: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    damping: float = 0.0,
    init_precision: float = 1.0,
    num_samples: int = 1,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """VOGN, Algorithm 1 of Osawa et al. (2019, arXiv:1906.02506), with its learning rate.

    ``optax.chain(scale_by_vogn(num_data, batch_size, ...), optax.scale_by_learning_rate(learning_rate))``;
    see ``scale_by_vogn`` for the step, the ``grad_fn`` contract, the arguments and the ``noise``
    test hook. ``vogn_sample`` finds the ``VOGNState`` inside the chain's state.

    Args:
      learning_rate: ``alpha`` > 0 of line 11, or an ``optax.Schedule`` of the step count.
      num_data: see ``scale_by_vogn``.
      batch_size: see ``scale_by_vogn``.
      prior_precision: see ``scale_by_vogn`` (required).
      beta1: see ``scale_by_vogn``.
      beta2: see ``scale_by_vogn``.
      damping: see ``scale_by_vogn``.
      init_precision: see ``scale_by_vogn``.
      num_samples: see ``scale_by_vogn``.
      seed: see ``scale_by_vogn``.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    return with_learning_rate(
        "VOGN",
        scale_by_vogn(
            num_data,
            batch_size,
            prior_precision=prior_precision,
            beta1=beta1,
            beta2=beta2,
            damping=damping,
            init_precision=init_precision,
            num_samples=num_samples,
            seed=seed,
        ),
        learning_rate,
    )
