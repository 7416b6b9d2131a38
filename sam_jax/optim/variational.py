"""Mean-field Gaussian variational inference (Bayes by Backprop) as an optax transformation.

References:
  Blundell, Cornebise, Kavukcuoglu & Wierstra, 2015. Weight Uncertainty in Neural Networks.
  ICML 2015, arXiv:1505.05424 (Sec. 3.2, steps 1-7; eq. 2 for the objective).
  Ovadia et al., 2019. Can You Trust Your Model's Uncertainty? NeurIPS 2019, arXiv:1906.02530
  (its "SVI" baseline is this posterior family).

The posterior is ``q(w) = N(mu, diag(sigma^2))`` with ``sigma = softplus(rho) = log(1 + exp(rho))``
(Blundell et al., Sec. 3.2). ``mu`` are the parameters the train loop holds; ``rho`` lives in the
optimizer state. The prior is ``p(w) = N(0, I / prior_precision)``. Dividing eq. 2 by the number of
training examples ``N`` gives the per-example negative ELBO that one step descends:

    L(mu, rho) = E_q[mean_i NLL_i(w)] + KL(q || p) / N.

One step draws ``z ~ N(0, I)``, sets ``w = mu + sigma z`` (step 2) and ``g = grad_fn(w)`` (the
gradient of the batch's mean NLL). The reparameterised Monte-Carlo gradient (steps 4-6, with the
KL term in closed form instead of sampled) is

    dL/dmu  = g + prior_precision mu / N,
    dL/drho = (g z + (prior_precision sigma - 1 / sigma) / N) sigmoid(rho),

since ``dw/dmu = 1``, ``dw/drho = z sigmoid(rho)`` and ``d softplus(rho)/drho = sigmoid(rho)``.
Both gradients go to one ``base`` optimizer as the pair ``(mu, rho)`` (step 7 with any optax
optimizer in place of plain gradient descent).
"""

import math
import numbers
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sam_jax.optim.states import find_state

GradFn = Callable[[optax.Params], optax.Updates]


class MeanFieldVIState(NamedTuple):
    """State of ``bayes_by_backprop``."""

    key: jax.Array  # PRNG key for the weight noise of the next step (raw uint32 key)
    rho: optax.Params  # unconstrained scale, sigma = softplus(rho) (Blundell et al.'s notation)
    base_state: optax.OptState  # state of ``base`` for the pair (mu, rho)


def kl_divergence_mean_field(mu: optax.Params, sigma: optax.Params, prior_precision: float) -> jax.Array:
    """``KL(N(mu, diag(sigma^2)) || N(0, I / prior_precision))``, summed over every weight.

    Per weight, with ``lam = prior_precision``: ``(lam (sigma^2 + mu^2) - 1 - log(lam sigma^2)) / 2``
    (the closed form of the KL term of Blundell et al. 2015, arXiv:1505.05424, eq. 2, for a Gaussian
    prior).

    Args:
      mu: posterior means, a pytree.
      sigma: posterior standard deviations > 0, a pytree like ``mu``.
      prior_precision: ``lam`` > 0 of the prior.

    Returns:
      A scalar.
    """

    def per_leaf(m: jax.Array, s: jax.Array) -> jax.Array:
        variance_ratio = prior_precision * s**2
        return 0.5 * jnp.sum(variance_ratio + prior_precision * m**2 - 1.0 - jnp.log(variance_ratio))

    return sum(jax.tree.leaves(jax.tree.map(per_leaf, mu, sigma)))


def mean_field_vi_sample(params: optax.Params, state: optax.OptState, key: jax.Array, num_data: int) -> optax.Params:
    """Draws one sample ``mu + softplus(rho) z`` from the mean-field posterior.

    Blundell et al. (2015, arXiv:1505.05424), Sec. 3.2, step 2 (and Sec. 5: predictions average over
    such samples). The signature is ``bsam_sample``'s, so that it serves as a registry spec's
    ``posterior_sample``.

    Args:
      params: posterior mean ``mu`` (the trained parameters).
      state: the state of ``bayes_by_backprop`` (``MeanFieldVIState``), or of any chain containing it,
        such as ``mean_field_vi``'s.
      key: PRNG key for this sample.
      num_data: unused: ``sigma`` is learned directly, not derived from ``N`` (kept for the common
        signature).

    Returns:
      A pytree like ``params``.

    Raises:
      ValueError: when ``state`` does not hold exactly one ``MeanFieldVIState``.
    """
    del num_data
    rho = find_state(
        state, MeanFieldVIState, "mean_field_vi_sample", "bayes_by_backprop, mean_field_vi, or a chain containing one"
    ).rho
    noise = optax.tree.random_like(key, params)
    return jax.tree.map(lambda m, r, z: m + jax.nn.softplus(r) * z, params, rho, noise)


def _check_vi_hyper_parameters(**values: float) -> None:
    """One ``ValueError`` naming every out-of-range mean-field VI hyper-parameter."""
    checks = {
        "num_data must be a positive integer": (
            isinstance(values["num_data"], numbers.Integral) and values["num_data"] > 0
        ),
        "prior_precision must be > 0": values["prior_precision"] > 0,
        "init_std must be > 0": values["init_std"] > 0,
    }
    for name in ("b1", "b2"):
        if name in values:
            checks[f"{name} must lie in [0, 1)"] = 0 <= values[name] < 1
    if "learning_rate" in values and not callable(values["learning_rate"]):
        checks["learning_rate must be > 0"] = values["learning_rate"] > 0
    failed = [message for message, ok in checks.items() if not ok]
    if failed:
        got = ", ".join(f"{name}={value}" for name, value in values.items())
        raise ValueError(f"Bad mean-field VI hyper-parameters: {'; '.join(failed)} (got {got}).")


def bayes_by_backprop(
    base: optax.GradientTransformation,
    num_data: int,
    *,
    prior_precision: float,
    init_std: float,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Mean-field Gaussian VI (Blundell et al. 2015, arXiv:1505.05424, Sec. 3.2) around any optimizer.

    ``update(grads, state, params, grad_fn=grad_fn)`` is one whole step of the module docstring:
    ``grad_fn`` is called once, at the sample ``w = mu + softplus(rho) z``, and must return the
    gradient of the batch's *mean* NLL; the gradients of the per-example negative ELBO for ``mu``
    and ``rho`` go to ``base`` as the pair ``(mu, rho)``; ``base``'s update of ``rho`` is applied to
    the state and its update of ``mu`` returned. ``grads`` is not used (it may be ``None``).

    What is where: the prior's pull ``prior_precision mu / N`` is part of the ``mu`` gradient, so no
    separate weight decay is needed. Anything that should act on both ``mu`` and ``rho`` (clipping,
    schedules, weight decay) belongs in ``base``; a transformation chained after this one sees the
    ``mu`` update only.

    The optional extra argument ``noise`` of ``update`` (a pytree like ``params`` of standard-normal
    draws ``z``) replaces the draw from the state's key; it is the test hook for comparing against a
    reference with the same noise. The key is split every step either way.

    Example::

      tx = bayes_by_backprop(optax.adam(1e-3), num_data=50_000, prior_precision=1.0, init_std=1e-3)
      state = tx.init(params)
      updates, state = tx.update(None, state, params, grad_fn=jax.grad(lambda p: mean_nll(p, batch)))
      params = optax.apply_updates(params, updates)

    Args:
      base: optimizer of the pair ``(mu, rho)``.
      num_data: ``N`` > 0, training-set size; scales the KL term to one example.
      prior_precision: ``lam`` > 0 of the prior ``N(0, I / lam)`` over all ``N`` examples (the
        per-example objective uses ``lam / N``, like bSAM's ``prior_precision``).
      init_std: initial ``sigma`` > 0 of every weight (``rho = log(expm1(init_std))``).
      seed: seed of the PRNG key stored in the state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``MeanFieldVIState``; ``update`` needs
      ``params`` and ``grad_fn``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    _check_vi_hyper_parameters(num_data=num_data, prior_precision=prior_precision, init_std=init_std)
    init_rho = math.log(math.expm1(init_std))  # softplus^-1(init_std)
    prior_per_example = prior_precision / num_data

    def init(params: optax.Params) -> MeanFieldVIState:
        rho = optax.tree.full_like(params, init_rho)
        return MeanFieldVIState(key=jax.random.PRNGKey(seed), rho=rho, base_state=base.init((params, rho)))

    def update(
        grads: optax.Updates | None,
        state: MeanFieldVIState,
        params: optax.Params | None = None,
        *,
        grad_fn: GradFn | None = None,
        noise: optax.Params | None = None,
        **extra_args,
    ) -> tuple[optax.Updates, MeanFieldVIState]:
        del grads, extra_args
        if params is None or grad_fn is None:
            raise ValueError(
                "Mean-field VI needs params and grad_fn=<params -> gradient of the batch's mean NLL>: call "
                "tx.update(None, state, params, grad_fn=grad_fn)."
            )
        key, sample_key = jax.random.split(state.key)
        if noise is None:
            noise = optax.tree.random_like(sample_key, params)
        sigma = jax.tree.map(jax.nn.softplus, state.rho)
        g = grad_fn(jax.tree.map(lambda m, s, z: m + s * z, params, sigma, noise))
        grad_mu = jax.tree.map(lambda gi, m: gi + prior_per_example * m, g, params)
        grad_rho = jax.tree.map(
            lambda gi, z, s, r: (gi * z + prior_per_example * s - 1.0 / (num_data * s)) * jax.nn.sigmoid(r),
            g,
            noise,
            sigma,
            state.rho,
        )
        (update_mu, update_rho), base_state = base.update((grad_mu, grad_rho), state.base_state, (params, state.rho))
        rho = optax.apply_updates(state.rho, update_rho)
        return update_mu, MeanFieldVIState(key=key, rho=rho, base_state=base_state)

    return optax.GradientTransformationExtraArgs(init, update)


def mean_field_vi(
    learning_rate: optax.ScalarOrSchedule,
    num_data: int,
    *,
    prior_precision: float = 1.0,
    init_std: float = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Mean-field Gaussian VI (Blundell et al. 2015, arXiv:1505.05424) with Adam on ``(mu, rho)``.

    ``bayes_by_backprop(optax.adam(learning_rate, b1, b2), num_data, ...)``, the "SVI" baseline
    setting of Ovadia et al. (2019, arXiv:1906.02530); see ``bayes_by_backprop`` for the step and
    the ``noise`` test hook. ``mean_field_vi_sample`` draws from the learned posterior.

    Defaults: ``prior_precision = 1`` is the standard-normal prior. ``init_std = 1e-3`` is well
    below the scale of standard initialisations (``sqrt(2 / fan_in)`` is 0.02-0.1 for fan-ins of
    200-5000), so the first steps act like the deterministic base optimizer and the weights are not
    drowned in noise before the means have learned anything; the KL term then grows ``sigma``
    (at small ``sigma`` its ``rho`` gradient is about ``-1 / N``).

    Example::

      tx = mean_field_vi(1e-3, num_data=50_000)
      state = tx.init(params)
      updates, state = tx.update(None, state, params, grad_fn=jax.grad(lambda p: mean_nll(p, batch)))
      params = optax.apply_updates(params, updates)

    Args:
      learning_rate: Adam's step size > 0, or an ``optax.Schedule`` of the step count.
      num_data: see ``bayes_by_backprop``.
      prior_precision: see ``bayes_by_backprop``.
      init_std: see ``bayes_by_backprop``.
      b1: Adam's first-moment decay in [0, 1).
      b2: Adam's second-moment decay in [0, 1).
      seed: see ``bayes_by_backprop``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``MeanFieldVIState``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    _check_vi_hyper_parameters(
        learning_rate=learning_rate,
        num_data=num_data,
        prior_precision=prior_precision,
        init_std=init_std,
        b1=b1,
        b2=b2,
    )
    return bayes_by_backprop(
        optax.adam(learning_rate, b1=b1, b2=b2),
        num_data,
        prior_precision=prior_precision,
        init_std=init_std,
        seed=seed,
    )
