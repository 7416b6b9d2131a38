"""Label smoothing and its logit-margin variants: LS, MbLS and ACLS."""

import jax
import jax.numpy as jnp

from sam_jax.losses.classification import _true_class_log_prob, masked_mean
from sam_jax.losses.hparams import check
from sam_jax.losses.validation import check_labels


def label_smoothing(
    logits: jax.Array, labels: jax.Array, *, smoothing: float = 0.1, mask: jax.Array | None = None
) -> jax.Array:
    """Cross-entropy to the smoothed target ``(1 - smoothing) e_y + smoothing / K``.

    Per example ``-(1 - smoothing) log p_y - (smoothing / K) sum_k log p_k``; ``smoothing = 0`` is
    cross-entropy. Default ``0.1`` as in Szegedy et al. (2015) and Müller et al.

    References:
      Müller, Kornblith and Hinton, 2019, "When Does Label Smoothing Help?", arXiv:1906.02629
      (targets ``y_k (1 - alpha) + alpha / K``).

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      smoothing: ``alpha`` in ``[0, 1)``.
      mask: optional ``[B]`` weights (1 real example, 0 padding).

    Returns:
      Scalar (masked) mean loss.
    """
    check("label_smoothing", smoothing=smoothing)
    check_labels(labels, logits.shape[-1], mask=mask, where="label_smoothing")
    return masked_mean(label_smoothing_per_example(logits, labels, smoothing=smoothing), mask)


def label_smoothing_per_example(logits: jax.Array, labels: jax.Array, *, smoothing: float) -> jax.Array:
    """``-(1 - smoothing) log p_y - (smoothing / K) sum_k log p_k`` per example ``[B]`` (no checks)."""
    log_probs, log_p = _true_class_log_prob(logits, labels)
    return -(1.0 - smoothing) * log_p - smoothing * jnp.mean(log_probs, axis=-1)


def mbls(
    logits: jax.Array, labels: jax.Array, *, margin: float = 10.0, weight: float = 0.1, mask: jax.Array | None = None
) -> jax.Array:
    """Margin-based label smoothing: CE + ``weight * mean_k max(0, max_j z_j - z_k - margin)``.

    The paper writes the penalty as a sum over classes; the authors' code (whose ``weight = 0.1``,
    ``margin = 10`` are the paper's defaults) averages it over classes and examples, which is what
    is implemented here so that the default weight means the same.

    References:
      Liu, Ben Ayed, Galdran and Dolz, 2022, "The Devil is in the Margin: Margin-based Label
      Smoothing for Network Calibration", arXiv:2111.15430.

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      margin: logit-distance margin ``m >= 0``.
      weight: penalty weight ``lambda >= 0``.
      mask: optional ``[B]`` weights.

    Returns:
      Scalar (masked) mean loss.
    """
    check("mbls", margin=margin, weight=weight)
    check_labels(labels, logits.shape[-1], mask=mask, where="mbls")
    return masked_mean(mbls_per_example(logits, labels, margin=margin, weight=weight), mask)


def mbls_per_example(logits: jax.Array, labels: jax.Array, *, margin: float, weight: float) -> jax.Array:
    """MbLS per example ``[B]``: ``-log p_y + weight * mean_k max(0, max_j z_j - z_k - margin)`` (no checks)."""
    _, log_p = _true_class_log_prob(logits, labels)
    distances = jnp.max(logits, axis=-1, keepdims=True) - logits
    penalty = jnp.mean(jax.nn.relu(distances - margin), axis=-1)
    return -log_p + weight * penalty


def acls(
    logits: jax.Array,
    labels: jax.Array,
    *,
    pos_lambda: float = 1.0,
    neg_lambda: float = 0.1,
    alpha: float = 0.1,
    margin: float = 10.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Adaptive and conditional label smoothing: CE + ``alpha * R(z)``.

    With ``M = max_j z_j`` and ``k*`` its class,
    ``R = pos_lambda * mean_i max(0, M - margin)^2
    + neg_lambda * mean_{i, k != k*} max(0, sg(M) - z_k - margin)^2``
    (``sg``: stop-gradient): the largest logit is pulled below the margin and the others are kept
    within ``margin`` of it. Defaults are the paper's (and its code's) CIFAR settings.

    References:
      Park, Noh, Oh, Baek and Ham, 2023, "ACLS: Adaptive and Conditional Label Smoothing for Network
      Calibration", arXiv:2308.11911.

    Args:
      logits: ``[B, K]`` logits.
      labels: ``[B]`` integer labels.
      pos_lambda: weight ``lambda_1 >= 0`` of the term on the largest logit.
      neg_lambda: weight ``lambda_2 >= 0`` of the term on the other logits.
      alpha: weight ``>= 0`` of the regulariser.
      margin: margin ``m >= 0``.
      mask: optional ``[B]`` weights.

    Returns:
      Scalar (masked) mean loss.
    """
    check("acls", pos_lambda=pos_lambda, neg_lambda=neg_lambda, alpha=alpha, margin=margin)
    check_labels(labels, logits.shape[-1], mask=mask, where="acls")
    per_example = acls_per_example(
        logits, labels, pos_lambda=pos_lambda, neg_lambda=neg_lambda, alpha=alpha, margin=margin
    )
    return masked_mean(per_example, mask)


def acls_per_example(
    logits: jax.Array, labels: jax.Array, *, pos_lambda: float, neg_lambda: float, alpha: float, margin: float
) -> jax.Array:
    """ACLS per example ``[B]``: ``-log p_y + alpha * R(z)`` (no checks; see :func:`acls`)."""
    _, log_p = _true_class_log_prob(logits, labels)
    num_classes = logits.shape[-1]
    top = jnp.max(logits, axis=-1)
    is_top = jax.nn.one_hot(jnp.argmax(logits, axis=-1), num_classes, dtype=logits.dtype)
    positive = jax.nn.relu(top - margin) ** 2
    negative = jnp.sum(
        (1.0 - is_top) * jax.nn.relu(jax.lax.stop_gradient(top)[:, None] - logits - margin) ** 2, axis=-1
    ) / (num_classes - 1)
    return -log_p + alpha * (pos_lambda * positive + neg_lambda * negative)
