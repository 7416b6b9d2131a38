"""Ensembles inside one network: BatchEnsemble, MIMO and rank-1 Bayesian neural nets.

Each wraps any registry model (the ``backbone``) and returns per-member logits ``[B, K, C]``
(member axis 1); the ensemble prediction averages the members' softmax over axis 1.

BatchEnsemble and the rank-1 BNN need no change to the backbone's code: while the backbone runs,
a ``flax.linen.intercept_methods`` interceptor catches the ``__call__`` of every ``nn.Dense`` and
``nn.Conv`` and turns the layer ``x -> x W + b`` into member ``k``'s
``((x * r_k) W) * s_k + b + c_k``, creating ``r`` ``[K, in]``, ``s`` ``[K, out]`` and the member
bias offsets ``c`` ``[K, out]`` as parameters of that layer (next to its ``kernel``), so they get
the layer's deterministic path as their name. ``b`` is the layer's own bias (zero when it has
none), so member ``k``'s bias is ``b + c_k``. The input batch is tiled ``K`` times, member-major,
so every member sees every example; BatchNorm statistics are shared by the members.

References:
  Wen, Tran and Ba, 2020, "BatchEnsemble: an Alternative Approach to Efficient Ensemble and Lifelong
  Learning", arXiv:2002.06715.
  Havasi, Jenatton, Fort, Liu, Snoek, Lakshminarayanan, Dai and Tran, 2020, "Training independent
  subnetworks for robust prediction", arXiv:2010.06610.
  Dusenberry, Jerfel, Wen, Ma, Snoek, Heller, Lakshminarayanan and Tran, 2020, "Efficient and
  Scalable Bayesian Neural Nets with Rank-1 Factors", arXiv:2005.07186.
"""

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from sam_jax.models.dual_head import dual_head

# (layer, fan_in, fan_out, rows of the tiled batch) -> the factors r [rows, fan_in] and s [rows, fan_out] of
# every row.
FactorRows = Callable[[nn.Module, int, int, int], tuple[jax.Array, jax.Array]]


def fast_weight_init(random_sign_init: float) -> nn.initializers.Initializer:
    """Initialiser of the rank-1 factors: random signs when ``random_sign_init > 0``, else normal.

    ``random_sign_init = p in (0, 1]`` draws every entry as +1 with probability ``p`` and -1
    otherwise: the random-sign initialisation of BatchEnsemble's fast weights (Wen et al. 2020,
    arXiv:2002.06715), which makes the members differ from the first step. ``random_sign_init =
    -t < 0`` draws every entry from ``N(1, t^2)`` instead, values near the identity scaling.
    """
    if random_sign_init > 0:

        def random_signs(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
            return (2 * jax.random.bernoulli(key, random_sign_init, shape) - 1).astype(dtype)

        return random_signs

    def around_one(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return 1 + abs(random_sign_init) * jax.random.normal(key, shape, dtype)

    return around_one


def _member_rows(values: jax.Array, rows: int) -> jax.Array:
    """``[K, d]`` per-member values -> ``[rows, d]`` for a member-major batch of ``rows = K * B`` rows."""
    return jnp.repeat(values, rows // values.shape[0], axis=0)


def _on_last_axis(rows: jax.Array, x: jax.Array) -> jax.Array:
    """``[N, d]`` -> broadcastable against ``x`` of shape ``[N, ..., d]`` (e.g. NHWC feature maps)."""
    return rows.reshape(rows.shape[:1] + (1,) * (x.ndim - 2) + rows.shape[1:]).astype(x.dtype)


def _rank1_interceptor(ensemble_size: int, factor_rows: FactorRows) -> Callable[..., Any]:
    """An interceptor that makes every ``nn.Dense`` / ``nn.Conv`` call a rank-1 ensemble layer.

    Member ``k``'s layer is ``((x * r_k) W) * s_k + b + c_k`` (BatchEnsemble, Wen et al. 2020,
    eq. 2, with the per-member bias ``b + c_k``): ``x W`` with the input and output scaled is
    ``x (W * r_k s_k^T)``, the shared weight times a rank-1 matrix (eq. 1). Every other method
    call passes through untouched.
    """

    def interceptor(next_fun: Callable[..., Any], args: tuple, kwargs: dict, context: Any) -> Any:
        layer = context.module
        if context.method_name != "__call__" or not isinstance(layer, (nn.Dense, nn.Conv)):
            return next_fun(*args, **kwargs)
        x, *rest = args
        r, s = factor_rows(layer, x.shape[-1], layer.features, x.shape[0])
        y = next_fun(x * _on_last_axis(r, x), *rest, **kwargs)
        offsets = layer.param("member_bias", nn.initializers.zeros, (ensemble_size, layer.features), layer.param_dtype)
        # The layer has added its own bias b before the output scaling; take it out, scale, put it back.
        shared_bias = layer.get_variable("params", "bias").astype(y.dtype) if layer.use_bias else 0.0
        member_bias = shared_bias + _on_last_axis(_member_rows(offsets, y.shape[0]), y)
        return (y - shared_bias) * _on_last_axis(s, y) + member_bias

    return interceptor


def _tiled_ensemble_call(module: nn.Module, x: jax.Array, train: bool, factor_rows: FactorRows) -> jax.Array:
    """Runs ``module.backbone`` on ``x`` tiled ``K`` times with rank-1 layers; logits ``[B, K, ...]``."""
    k = module.ensemble_size
    tiled = jnp.tile(x, (k,) + (1,) * (x.ndim - 1))
    with nn.intercept_methods(_rank1_interceptor(k, factor_rows)):
        y = module.backbone(num_classes=module.num_classes)(tiled, train=train)
    return jnp.swapaxes(y.reshape((k, x.shape[0]) + y.shape[1:]), 0, 1)


class BatchEnsemble(nn.Module):
    """BatchEnsemble over ``backbone`` (Wen, Tran and Ba 2020, arXiv:2002.06715, eqs. 1-2).

    Every ``nn.Dense`` / ``nn.Conv`` of the backbone keeps its shared weight ``W`` (and bias ``b``)
    and gains, per member ``k``, fast weights ``r_k`` (``"fast_in"``, ``[K, in]``) and ``s_k``
    (``"fast_out"``, ``[K, out]``) and a bias offset ``c_k`` (``"member_bias"``, ``[K, out]``,
    zero-initialised): member ``k`` computes ``((x * r_k) W) * s_k + b + c_k``. That adds
    ``K * (in + 2 * out)`` parameters per layer. In training and evaluation the batch is tiled
    ``K`` times, so every member sees every example.

    Attributes:
      backbone: builds the backbone from ``num_classes``, e.g. a registry entry.
      num_classes: C.
      ensemble_size: K.
      random_sign_init: initialisation of ``r`` and ``s`` (see ``fast_weight_init``).
    """

    backbone: Callable[..., nn.Module]
    num_classes: int
    ensemble_size: int = 4
    random_sign_init: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        init = fast_weight_init(self.random_sign_init)

        def factor_rows(layer: nn.Module, fan_in: int, fan_out: int, rows: int) -> tuple[jax.Array, jax.Array]:
            r = layer.param("fast_in", init, (self.ensemble_size, fan_in), layer.param_dtype)
            s = layer.param("fast_out", init, (self.ensemble_size, fan_out), layer.param_dtype)
            return _member_rows(r, rows), _member_rows(s, rows)

        return _tiled_ensemble_call(self, x, train, factor_rows)


def gaussian_kl(mean: jax.Array, std: jax.Array, prior_mean: float, prior_std: float) -> jax.Array:
    """Elementwise ``KL(N(mean, std^2) || N(prior_mean, prior_std^2))`` in closed form."""
    return jnp.log(prior_std / std) + (jnp.square(std) + jnp.square(mean - prior_mean)) / (2 * prior_std**2) - 0.5


def rank1_kl_divergence(params: Any, prior_mean: float, prior_std: float) -> jax.Array:
    """KL of every rank-1 factor's Gaussian to the prior, summed over all entries, members and layers.

    Reads the ``fast_{in,out}_mean`` / ``fast_{in,out}_rho`` pairs that ``Rank1BNN`` creates
    anywhere in ``params`` (std = softplus(rho)). A layer called twice shares its factors and is
    counted once.
    """
    flat = traverse_util.flatten_dict(dict(params))
    total = jnp.zeros(())
    for path, mean in flat.items():
        if path[-1] in ("fast_in_mean", "fast_out_mean"):
            rho = flat[path[:-1] + (path[-1].replace("_mean", "_rho"),)]
            total = total + jnp.sum(gaussian_kl(mean, nn.softplus(rho), prior_mean, prior_std))
    return total


class Rank1BNN(nn.Module):
    """Rank-1 Bayesian neural net over ``backbone`` (Dusenberry et al. 2020, arXiv:2005.07186).

    As ``BatchEnsemble``, but member ``k``'s factors ``r_k``, ``s_k`` are mean-field Gaussians
    ``N(mean, softplus(rho)^2)`` (parameters ``"fast_{in,out}_mean"`` and ``"fast_{in,out}_rho"``,
    ``[K, width]`` each) with the deterministic bias offsets ``"member_bias"`` ``[K, out]``: the
    mixture-of-K posterior over the rank-1 factors with point-estimated shared weights. That adds
    ``K * (2 * in + 3 * out)`` parameters per layer.

    In training every row of the tiled batch (every example, for every member) draws its own
    ``r`` and ``s`` by reparameterisation from the ``"dropout"`` rng stream, and the KL of all the
    factors' Gaussians to the prior ``N(prior_mean, prior_std^2)``, summed over every entry, member
    and layer (``rank1_kl_divergence``), is sown as ``("penalties", "kl")``; the loss adds it
    divided by the training-set size. As the loss averages the members' cross-entropies, this sum
    weighs the prior ``K`` times more than averaging per-member ELBOs would (whose KL term is
    ``(1/K) sum_k KL(q_k || p)``). In evaluation the factors are their means (no rng needed).

    Attributes:
      backbone: builds the backbone from ``num_classes``, e.g. a registry entry.
      num_classes: C.
      ensemble_size: K, the number of mixture components (members).
      prior_mean: mean of the Gaussian prior of every factor entry.
      prior_std: its standard deviation.
      init_std: initial posterior standard deviation of every entry.
      random_sign_init: initialisation of the posterior means (see ``fast_weight_init``).
    """

    backbone: Callable[..., nn.Module]
    num_classes: int
    ensemble_size: int = 4
    prior_mean: float = 1.0
    prior_std: float = 0.1
    init_std: float = 0.05
    random_sign_init: float = -0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        mean_init = fast_weight_init(self.random_sign_init)
        # softplus(rho) = init_std.
        rho_init = nn.initializers.constant(math.log(math.expm1(self.init_std)))

        def factor_rows(layer: nn.Module, fan_in: int, fan_out: int, rows: int) -> tuple[jax.Array, jax.Array]:
            means, rhos = [], []
            for side, width in (("in", fan_in), ("out", fan_out)):
                shape = (self.ensemble_size, width)
                means.append(layer.param(f"fast_{side}_mean", mean_init, shape, layer.param_dtype))
                rhos.append(layer.param(f"fast_{side}_rho", rho_init, shape, layer.param_dtype))
            # r and s side by side: one draw of noise per layer.
            factors = _member_rows(jnp.concatenate(means, axis=1), rows)
            if train:
                noise = jax.random.normal(layer.make_rng("dropout"), factors.shape, factors.dtype)
                factors = factors + _member_rows(nn.softplus(jnp.concatenate(rhos, axis=1)), rows) * noise
            return factors[:, :fan_in], factors[:, fan_in:]

        logits = _tiled_ensemble_call(self, x, train, factor_rows)
        if train:
            kl = rank1_kl_divergence(self.variables["params"], self.prior_mean, self.prior_std)
            self.sow("penalties", "kl", kl)
        return logits


def mimo_member_indices(key: jax.Array, batch_size: int, ensemble_size: int, input_repetition: float) -> jax.Array:
    """Which example every MIMO member sees in every row of a training batch, ``[ensemble_size, batch_size]``.

    Row ``i`` of member ``k`` holds example ``indices[k, i]``, and every ``indices[k]`` is a
    permutation of ``range(batch_size)``. Each row is, with probability ``input_repetition``,
    shared: all members see the example at that position (the input repetition of Havasi et al.
    2021, arXiv:2010.06610); the other rows are shuffled among themselves, independently for every
    member.

    Args:
      key: PRNG key.
      batch_size: B.
      ensemble_size: M.
      input_repetition: probability in [0, 1] that a row is shared by all members.

    Returns:
      The indices, int32 ``[M, B]``.
    """
    shared_key, *member_keys = jax.random.split(key, ensemble_size + 1)
    positions = jnp.arange(batch_size)
    shared = jax.random.bernoulli(shared_key, input_repetition, (batch_size,))
    # Slots: the free positions in order, then the shared ones in order.
    slots = jnp.argsort(shared, stable=True)

    def member_indices(member_key: jax.Array) -> jax.Array:
        # The free positions in a random order, then the shared ones in order; placed into the
        # slots, this shuffles the free positions and fixes the shared ones.
        ranks = jnp.where(shared, batch_size + positions, jax.random.permutation(member_key, batch_size))
        return jnp.zeros(batch_size, jnp.int32).at[slots].set(jnp.argsort(ranks).astype(jnp.int32))

    return jnp.stack([member_indices(member_key) for member_key in member_keys])


class MIMO(nn.Module):
    """Multi-input multi-output ensemble over ``backbone`` (Havasi et al. 2020, arXiv:2010.06610).

    The M members' inputs are concatenated along the channel (last) axis, a ``[B, H, W]`` input
    getting a channel axis first; the backbone is built with ``M * C`` outputs, read as ``[B, M, C]``.
    Only the first layer's fan-in and the head grow, e.g. ``(M - 1) * (in * k_h * k_w * out)`` and
    ``(M - 1) * C * (features + 1)`` parameters for a convolutional stem and a dense head.

    In training member ``k`` sees the batch in its own order ``mimo_member_indices`` (drawn from
    the ``"dropout"`` rng stream, with input repetition); its logits are put back in the original
    order, so ``logits[i, k]`` is member ``k``'s prediction for example ``i`` (label ``labels[i]``)
    whatever order it saw. In evaluation every member sees ``x_i`` (no rng needed).

    Attributes:
      backbone: builds the backbone from ``num_classes``, e.g. a registry entry.
      num_classes: C.
      ensemble_size: M.
      input_repetition: probability that a training row shows all members the same example.
    """

    backbone: Callable[..., nn.Module]
    num_classes: int
    ensemble_size: int = 3
    input_repetition: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        members, batch = self.ensemble_size, x.shape[0]
        body = self.backbone(num_classes=members * self.num_classes)
        if not train:
            logits = body(jnp.concatenate([x] * members, axis=-1), train=train)
            return logits.reshape(batch, members, self.num_classes)
        indices = mimo_member_indices(self.make_rng("dropout"), batch, members, self.input_repetition)
        inputs = jnp.concatenate([x[indices[k]] for k in range(members)], axis=-1)
        logits = body(inputs, train=train).reshape(batch, members, self.num_classes)
        # Row i of member k predicts example indices[k, i]; example j is in row inverse[k, j].
        inverse = jnp.argsort(indices, axis=1)
        return logits[inverse.T, jnp.arange(members)]


def _registry_backbone(wrapper: str, backbone: str, backbone_kwargs: Any) -> Callable[..., nn.Module]:
    """The registry model ``backbone`` as a constructor taking ``num_classes``."""
    from sam_jax.models import MODELS  # the registry imports this module

    if backbone not in MODELS:
        raise ValueError(f"{wrapper}: unknown backbone {backbone!r}; choose one of {sorted(MODELS)}.")
    if MODELS[backbone] in (batch_ensemble, mimo, rank1_bnn, dual_head):
        raise ValueError(f"{wrapper}: backbone {backbone!r} has several heads; choose a network with logits [B, C].")
    kwargs = dict(backbone_kwargs or {})
    if "num_classes" in kwargs:
        raise ValueError(f"{wrapper}: backbone_kwargs may not set num_classes; the wrapper sets it.")
    return lambda **extra: MODELS[backbone](**kwargs, **extra)


def _check_ensemble_size(wrapper: str, ensemble_size: int) -> None:
    if ensemble_size < 1:
        raise ValueError(f"{wrapper}: ensemble_size={ensemble_size} must be >= 1.")


def _check_random_sign_init(wrapper: str, random_sign_init: float) -> None:
    if random_sign_init == 0 or random_sign_init > 1:
        raise ValueError(
            f"{wrapper}: random_sign_init={random_sign_init} must be a probability in (0, 1] (random signs) "
            "or negative (minus the standard deviation of a normal around 1)."
        )


def batch_ensemble(
    num_classes: int,
    *,
    backbone: str = "lenet5",
    backbone_kwargs: Any = None,
    ensemble_size: int = 4,
    random_sign_init: float = 0.5,
) -> BatchEnsemble:
    """``BatchEnsemble`` of ``ensemble_size`` members over the registry model ``backbone``."""
    _check_ensemble_size("batch_ensemble", ensemble_size)
    _check_random_sign_init("batch_ensemble", random_sign_init)
    body = _registry_backbone("batch_ensemble", backbone, backbone_kwargs)
    return BatchEnsemble(body, num_classes, ensemble_size, random_sign_init)


def rank1_bnn(
    num_classes: int,
    *,
    backbone: str = "lenet5",
    backbone_kwargs: Any = None,
    ensemble_size: int = 4,
    prior_mean: float = 1.0,
    prior_std: float = 0.1,
    init_std: float = 0.05,
    random_sign_init: float = -0.5,
) -> Rank1BNN:
    """``Rank1BNN`` with ``ensemble_size`` mixture components over the registry model ``backbone``."""
    _check_ensemble_size("rank1_bnn", ensemble_size)
    _check_random_sign_init("rank1_bnn", random_sign_init)
    if prior_std <= 0 or init_std <= 0:
        raise ValueError(f"rank1_bnn: prior_std={prior_std} and init_std={init_std} must be > 0.")
    body = _registry_backbone("rank1_bnn", backbone, backbone_kwargs)
    return Rank1BNN(body, num_classes, ensemble_size, prior_mean, prior_std, init_std, random_sign_init)


def mimo(
    num_classes: int,
    *,
    backbone: str = "lenet5",
    backbone_kwargs: Any = None,
    ensemble_size: int = 3,
    input_repetition: float = 0.0,
) -> MIMO:
    """``MIMO`` with ``ensemble_size`` subnetworks inside the registry model ``backbone``."""
    _check_ensemble_size("mimo", ensemble_size)
    if not 0 <= input_repetition <= 1:
        raise ValueError(f"mimo: input_repetition={input_repetition} must be a probability in [0, 1].")
    body = _registry_backbone("mimo", backbone, backbone_kwargs)
    return MIMO(body, num_classes, ensemble_size, input_repetition)
