"""Batch-mixing training methods: mixup and MIT-L (mixup inference in training, last layer).

Both are pure functions of a PRNG key and the batch, meant to run inside the jitted train step with
a key split from the step's key, so a resumed run draws the same mixing as an uninterrupted one.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from sam_jax.losses.hparams import RULES, check
from sam_jax.models.registry import Registry

LossFn = Callable[..., jax.Array]


class MixupBatch(NamedTuple):
    """A mixup batch: feed ``images`` to the model, then :func:`mixup_loss`."""

    images: jax.Array  # [B, ...] lam * x + (1 - lam) * x[perm]
    labels_a: jax.Array  # [B] the original labels
    labels_b: jax.Array  # [B] labels[perm]
    lam: jax.Array  # scalar mixing weight ~ Beta(alpha, alpha)
    mask: jax.Array | None  # [B] mask * mask[perm] (None without a mask): pairs of real examples


def check_mixing_alpha(where: str, alpha: float) -> None:
    """Raises ``ValueError`` unless the Beta parameter ``alpha`` is positive."""
    check(where, alpha=alpha)


def _pair(key: jax.Array, batch_size: int) -> jax.Array:
    return jax.random.permutation(key, batch_size)


def mixup(
    key: jax.Array, images: jax.Array, labels: jax.Array, *, alpha: float = 1.0, mask: jax.Array | None = None
) -> MixupBatch:
    """Mixes every example with a random partner: ``x~ = lam x_i + (1 - lam) x_perm(i)``.

    ``lam ~ Beta(alpha, alpha)`` once per batch and ``perm`` a random permutation, both drawn from
    ``key`` only. ``alpha = 1`` (``lam`` uniform) is the paper's CIFAR setting.

    References:
      Zhang, Cisse, Dauphin and Lopez-Paz, 2017, "mixup: Beyond Empirical Risk Minimization",
      arXiv:1710.09412.

    Args:
      key: PRNG key (e.g. split from the train step's key).
      images: ``[B, ...]`` inputs.
      labels: ``[B]`` integer labels.
      alpha: Beta parameter ``> 0``.
      mask: optional ``[B]`` weights (1 real, 0 padding).

    Returns:
      A ``MixupBatch``.
    """
    check_mixing_alpha("mixup", alpha)
    lam_key, perm_key = jax.random.split(key)
    lam = jax.random.beta(lam_key, alpha, alpha, dtype=jnp.float32).astype(images.dtype)
    perm = _pair(perm_key, images.shape[0])
    mixed = lam * images + (1.0 - lam) * images[perm]
    return MixupBatch(mixed, labels, labels[perm], lam, None if mask is None else mask * mask[perm])


def mixup_loss(loss_fn: LossFn, logits: jax.Array, batch: MixupBatch) -> jax.Array:
    """``lam * L(logits, labels_a) + (1 - lam) * L(logits, labels_b)`` for a base ``loss_fn(logits, labels, mask)``.

    For cross-entropy this equals cross-entropy to the mixed soft label (the paper's formulation).
    """
    lam = batch.lam.astype(logits.dtype)
    return lam * loss_fn(logits, batch.labels_a, batch.mask) + (1.0 - lam) * loss_fn(logits, batch.labels_b, batch.mask)


class MitBatch(NamedTuple):
    """An MIT-L batch: feed ``images_1`` and ``images_2`` to the model, then :func:`mit_loss`."""

    images_1: jax.Array  # [B, ...] lam_1 * x + (1 - lam_1) * x[perm], lam_1 >= 1/2
    images_2: jax.Array  # [B, ...] lam_2 * x + (1 - lam_2) * x[perm], lam_2 <= 1/2
    labels_a: jax.Array  # [B] the original labels
    labels_b: jax.Array  # [B] labels[perm]
    lam_1: jax.Array  # scalar
    lam_2: jax.Array  # scalar, lam_1 - lam_2 > margin
    mask: jax.Array | None  # [B] mask * mask[perm] (None without a mask)


def check_mit_hparams(alpha: float, margin: float) -> None:
    """Raises ``ValueError`` naming the first invalid MIT-L hyper-parameter."""
    check("mit", alpha=alpha, margin=margin)


def mit_mix(
    key: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 1.0,
    margin: float = 0.0,
    mask: jax.Array | None = None,
) -> MitBatch:
    """Two mixups of the same pairs, with weights on either side of 1/2 (MIT).

    ``lam_1 = max(u, 1 - u)`` and ``lam_2 = min(v, 1 - v)`` with ``u, v ~ Beta(alpha, alpha)``,
    redrawn (from keys folded out of ``key``) until ``lam_1 - lam_2 > margin``, so that the two
    mixtures can be decoupled. The authors' defaults are ``alpha = 1`` and ``margin = 0``; the
    strict inequality only rejects the degenerate ``lam_1 = lam_2 = 1/2``.

    References:
      Wang, Li, Zhao, Heng and Zhang, 2023, "On the Pitfall of Mixup for Uncertainty Calibration",
      CVPR 2023, pp. 7609-7618 (no arXiv version), "mixup inference in training".

    Args:
      key: PRNG key.
      images: ``[B, ...]`` inputs.
      labels: ``[B]`` integer labels.
      alpha: Beta parameter ``> 0``.
      margin: required gap ``lam_1 - lam_2``, in ``[0, 1)``.
      mask: optional ``[B]`` weights.

    Returns:
      A ``MitBatch``.
    """
    check_mit_hparams(alpha, margin)
    lam_key, perm_key = jax.random.split(key)

    def draw(state):
        attempt, _, _ = state
        u, v = jax.random.beta(jax.random.fold_in(lam_key, attempt), alpha, alpha, (2,), jnp.float32)
        return attempt + 1, jnp.maximum(u, 1.0 - u), jnp.minimum(v, 1.0 - v)

    _, lam_1, lam_2 = jax.lax.while_loop(
        lambda state: state[1] - state[2] <= margin, draw, (jnp.int32(0), jnp.float32(0.5), jnp.float32(0.5))
    )
    lam_1, lam_2 = lam_1.astype(images.dtype), lam_2.astype(images.dtype)
    perm = _pair(perm_key, images.shape[0])
    partner = images[perm]
    return MitBatch(
        lam_1 * images + (1.0 - lam_1) * partner,
        lam_2 * images + (1.0 - lam_2) * partner,
        labels,
        labels[perm],
        lam_1,
        lam_2,
        None if mask is None else mask * mask[perm],
    )


def mit_decouple(
    logits_1: jax.Array, logits_2: jax.Array, lam_1: jax.Array, lam_2: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Recovers the outputs of the raw pair from the outputs of its two mixtures.

    Reading ``f(lam x_a + (1 - lam) x_b) = lam f_a + (1 - lam) f_b`` for both mixtures and solving
    the 2x2 system: ``f_a = ((1 - lam_2) f_1 - (1 - lam_1) f_2) / (lam_1 - lam_2)`` and
    ``f_b = (lam_1 f_2 - lam_2 f_1) / (lam_1 - lam_2)``.
    """
    lam_1, lam_2 = lam_1.astype(logits_1.dtype), lam_2.astype(logits_1.dtype)
    gap = lam_1 - lam_2
    return ((1.0 - lam_2) * logits_1 - (1.0 - lam_1) * logits_2) / gap, (lam_1 * logits_2 - lam_2 * logits_1) / gap


def mit_loss(loss_fn: LossFn, logits_1: jax.Array, logits_2: jax.Array, batch: MitBatch) -> jax.Array:
    """MIT-L: ``(L(f_a, labels_a) + L(f_b, labels_b)) / 2`` on the decoupled outputs (one-hot labels)."""
    logits_a, logits_b = mit_decouple(logits_1, logits_2, batch.lam_1, batch.lam_2)
    return 0.5 * (loss_fn(logits_a, batch.labels_a, batch.mask) + loss_fn(logits_b, batch.labels_b, batch.mask))


class MixedObjective(NamedTuple):
    """How the train step turns a batch into a loss, with or without mixing.

    ``objective(key, forward, loss_fn, images, labels) -> (loss, logits, aux)``: ``forward(images)``
    returns the model's ``(logits, aux)`` (``aux``: e.g. updated BatchNorm statistics, passed
    through), ``loss_fn(logits, labels, mask)`` is the training loss, and ``logits`` are those of the
    images the model saw first (for the step's metrics and the loss state).
    """

    objective: Callable[..., tuple[jax.Array, jax.Array, Any]]


def _plain_objective(key, forward, loss_fn, images, labels):
    del key
    logits, aux = forward(images)
    return loss_fn(logits, labels, None), logits, aux


def _mixup_objective(alpha: float):
    def objective(key, forward, loss_fn, images, labels):
        batch = mixup(key, images, labels, alpha=alpha)
        logits, aux = forward(batch.images)
        return mixup_loss(loss_fn, logits, batch), logits, aux

    return objective


def _mit_objective(alpha: float, margin: float):
    def objective(key, forward, loss_fn, images, labels):
        batch = mit_mix(key, images, labels, alpha=alpha, margin=margin)
        logits, aux = forward(jnp.concatenate([batch.images_1, batch.images_2]))
        logits_1, logits_2 = jnp.split(logits, 2)
        return mit_loss(loss_fn, logits_1, logits_2, batch), logits_1, aux

    return objective


# name -> factory(**hparams) -> objective, with its hyper-parameters and their rules.
MIXINGS: Registry[Callable[..., Callable[..., tuple[jax.Array, jax.Array, Any]]]] = Registry("mixing")
MIXINGS.register("none", lambda: _plain_objective)
MIXINGS.register("mixup", _mixup_objective, defaults={"alpha": 1.0}, rules=RULES["mixup"])
MIXINGS.register("mit", _mit_objective, defaults={"alpha": 1.0, "margin": 0.0}, rules=RULES["mit"])


def get_mixing(name: str, **hparams: float) -> MixedObjective:
    """The train-step objective of batch-mixing method ``name`` (``none``, ``mixup``, ``mit``).

    Mixup (Zhang et al. 2017, arXiv:1710.09412) trains on ``lam x_i + (1 - lam) x_j`` with the loss
    mixed the same way; MIT-L (Wang et al. 2023, CVPR) trains on the outputs of the raw pair
    recovered from two mixtures. The key is the step's, so a resumed run mixes exactly as an
    uninterrupted one. With MIT-L the model sees both mixtures in one forward pass (BatchNorm
    statistics of the doubled batch).

    Raises:
      ValueError: unknown name or hyper-parameter, or a bad value (named).
    """
    hparams = {**MIXINGS.defaults(name), **hparams}
    MIXINGS.validate(name, hparams)
    return MixedObjective(MIXINGS[name](**hparams))
