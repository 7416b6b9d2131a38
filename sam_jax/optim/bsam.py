"""Bayesian SAM (bSAM; Möllenhoff & Khan 2023, sam-as-bayes.txt, Algorithm 1) as an optax step.

bSAM learns a diagonal Gaussian posterior ``N(w, 1 / (N s))`` over the weights: ``w`` is the mean
(the parameters the optimizer returns updates for) and ``s`` the precision vector kept in the
state, which also adapts the step size. One ``update`` is Algorithm 1, lines 3-9:

    theta = w + e,  e ~ N(0, 1 / (N s))                       (line 3)
    g     = grad L(theta)                                     (line 4)
    eps   = rho * g / s                                       (line 5)
    g_eps = grad L(w + eps)                                   (line 6)
    gm    = beta1 gm + (1 - beta1) (g_eps + delta w)          (line 7)
    s     = beta2 s + (1 - beta2) (sqrt(s) |g| + delta + gamma)   (line 8)
    w     = w - alpha gm / s                                  (line 9, with the new s)

``delta`` is the L2 regulariser and ``gamma`` the damping. The paper's prior is
``N(0, I / delta_0)`` with ``delta_0 = N delta`` (App. E.3) and its tables report ``N delta``;
``bsam`` therefore takes ``prior_precision = delta_0 = N delta`` and uses
``delta = prior_precision / num_data``.
"""
import numbers
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

GradFn = Callable[[optax.Params], optax.Updates]


class BSAMState(NamedTuple):
    """State of ``bsam``."""

    count: jax.Array  # number of steps taken; indexes a learning-rate schedule
    key: jax.Array  # PRNG key for the weight noise of the next step (raw uint32 key)
    momentum: optax.Updates  # gm, moving average of g_eps + delta w (Alg. 1, line 7)
    precision: optax.Updates  # s, posterior precision per weight, divided by N (Alg. 1, line 8)


def _standard_normal_like(key: jax.Array, params: optax.Params) -> optax.Params:
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, noise)


def _perturb_by_posterior_noise(
    params: optax.Params, precision: optax.Updates, noise: optax.Params, num_data: int
) -> optax.Params:
    """``w + z / sqrt(N s)``: a posterior sample from standard-normal ``z``."""
    return jax.tree.map(lambda w, s, z: w + z * jax.lax.rsqrt(num_data * s), params, precision, noise)


def bsam_sample(params: optax.Params, state: BSAMState, key: jax.Array, num_data: int) -> optax.Params:
    """Draws one sample from the bSAM posterior ``N(w, 1 / (N s))`` (Algorithm 1, line 11).

    The paper's predictive distribution averages the softmax of ``K = 32`` such samples.

    Args:
      params: posterior mean ``w`` (the trained parameters).
      state: ``BSAMState`` holding the precision ``s``.
      key: PRNG key for this sample.
      num_data: ``N``, the number of training examples (as given to ``bsam``).

    Returns:
      A pytree like ``params``.
    """
    return _perturb_by_posterior_noise(params, state.precision, _standard_normal_like(key, params), num_data)


def bsam(
    learning_rate: Union[float, optax.Schedule],
    rho: float,
    num_data: int,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    prior_precision: float = 25.0,
    damping: float = 0.1,
    init_precision: float = 1.0,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Bayesian SAM, exactly Algorithm 1 of sam-as-bayes.txt (Möllenhoff & Khan, ICLR 2023).

    ``update(grads, state, params, grad_fn=grad_fn)`` calls ``grad_fn`` twice, at the noisy sample
    ``theta`` and at ``w + eps``; ``grads`` is not used (may be ``None``) because Algorithm 1 never
    needs the gradient at ``w``. The optional extra argument ``noise`` (a pytree like ``params`` of
    standard-normal draws ``z``, so that ``e = z / sqrt(N s)``) replaces the draw from the state's
    key; it is the test hook for comparing against a reference with the same noise. The key is
    split every step either way.

    Where this differs from the authors' code (team-approx-bayes/bayesian-sam), Algorithm 1 wins:
    the code divides by the precision *before* its update in line 9 (we use the new ``s``, as
    Algorithm 1 and eq. (31) write it); the code also splits each batch into sub-batches with their
    own noise and perturbation, which Algorithm 1 does not. No bias correction is applied to ``gm``
    (Algorithm 1 has none). ``precision`` is the paper's ``s`` (already divided by ``N``).

    Example::

      tx = bsam(optax.cosine_decay_schedule(0.1, 10_000), rho=0.01, num_data=60_000)
      state = tx.init(params)
      updates, state = tx.update(None, state, params, grad_fn=jax.grad(lambda p: loss(p, batch)))
      params = optax.apply_updates(params, updates)

    Args:
      learning_rate: ``alpha`` > 0, or an ``optax.Schedule`` of the step count (the paper anneals it
        with a cosine schedule, App. H).
      rho: ``rho`` >= 0, step size of the adversarial perturbation ``eps = rho g / s`` (line 5).
      num_data: ``N`` > 0, training-set size; sets the noise scale ``1 / (N s)`` and ``delta``.
      beta1: momentum ``beta1`` in [0, 1) (line 7).
      beta2: precision averaging ``beta2`` in [0, 1) (line 8).
      prior_precision: ``delta_0 = N delta`` >= 0 of the prior ``N(0, I / delta_0)`` (the ``N delta``
        column of the paper's Tables 6-7); the default 25 is its CIFAR-10 value.
      damping: ``gamma`` >= 0 added to the precision (line 8; 0.1 in Algorithm 1).
      init_precision: initial ``s`` > 0 (line 1; 1 in Algorithm 1).
      seed: seed of the PRNG key stored in the state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``BSAMState``.

    Raises:
      ValueError: for out-of-range hyper-parameters.
    """
    checks = {
        "rho must be >= 0": rho >= 0,
        "num_data must be a positive integer": isinstance(num_data, numbers.Integral) and num_data > 0,
        "beta1 must lie in [0, 1)": 0 <= beta1 < 1,
        "beta2 must lie in [0, 1)": 0 <= beta2 < 1,
        "prior_precision must be >= 0": prior_precision >= 0,
        "damping must be >= 0": damping >= 0,
        "init_precision must be > 0": init_precision > 0,
    }
    if not callable(learning_rate):
        checks["learning_rate must be > 0"] = learning_rate > 0
    failed = [message for message, ok in checks.items() if not ok]
    if failed:
        raise ValueError(
            f"Bad bSAM hyper-parameters: {'; '.join(failed)} (got learning_rate={learning_rate}, rho={rho}, "
            f"num_data={num_data}, beta1={beta1}, beta2={beta2}, prior_precision={prior_precision}, "
            f"damping={damping}, init_precision={init_precision})."
        )
    learning_rate_fn = learning_rate if callable(learning_rate) else optax.constant_schedule(learning_rate)
    delta = prior_precision / num_data

    def init(params: optax.Params) -> BSAMState:
        return BSAMState(
            count=jnp.zeros([], jnp.int32),
            key=jax.random.PRNGKey(seed),
            momentum=optax.tree.zeros_like(params),
            precision=optax.tree.full_like(params, init_precision),
        )

    def update(
        grads: Optional[optax.Updates],
        state: BSAMState,
        params: Optional[optax.Params] = None,
        *,
        grad_fn: Optional[GradFn] = None,
        noise: Optional[optax.Params] = None,
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
            noise = _standard_normal_like(sample_key, params)
        s = state.precision
        g = grad_fn(_perturb_by_posterior_noise(params, s, noise, num_data))
        g_eps = grad_fn(jax.tree.map(lambda w, gi, si: w + rho * gi / si, params, g, s))
        momentum = jax.tree.map(
            lambda m, ge, w: beta1 * m + (1 - beta1) * (ge + delta * w), state.momentum, g_eps, params
        )
        precision = jax.tree.map(
            lambda si, gi: beta2 * si + (1 - beta2) * (jnp.sqrt(si) * jnp.abs(gi) + delta + damping), s, g
        )
        step_size = learning_rate_fn(state.count)
        updates = jax.tree.map(lambda m, si: -step_size * m / si, momentum, precision)
        new_state = BSAMState(
            count=optax.safe_increment(state.count), key=key, momentum=momentum, precision=precision
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, update)
