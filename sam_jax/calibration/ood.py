"""Out-of-distribution and misclassification detection: AUROC of a confidence score.

Tan et al. (2025), Tables 1-3 ("OOD AUROC", e.g. CIFAR-10 against SVHN) and Möllenhoff & Khan
(2023), Sec. 5 (AUROC following Osawa et al. 2019) score each input by the model's
confidence and report the area under the ROC curve that separates in- from out-of-distribution
inputs; in-distribution inputs are the positive class. :func:`misclassification_auroc` separates
right from wrong predictions, and :func:`one_vs_rest_auroc` is the multi-class (one-vs-rest,
macro-averaged) AUROC of the predicted probabilities.

References:
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
  Möllenhoff & Khan, 2022. SAM as an Optimal Relaxation of Bayes. ICLR 2023, arXiv:2210.01620.
"""

import jax
import jax.numpy as jnp

from sam_jax.calibration import _common


def max_probability_score(probs: jax.Array) -> jax.Array:
    """Maximum softmax probability ``max_k p_k`` per row (Hendrycks & Gimpel 2016)."""
    return jnp.max(probs, axis=-1)


def negative_entropy_score(probs: jax.Array) -> jax.Array:
    """Negative predictive entropy ``sum_k p_k log p_k`` per row: higher means more confident."""
    return jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)


def _check_scores(name: str, scores: jax.Array, mask: jax.Array | None) -> None:
    if scores.ndim != 1 or scores.shape[0] < 1:
        raise ValueError(
            f"auroc: {name} must be a non-empty 1-D array of per-example scores, got "
            f"shape {scores.shape}; reduce probabilities with max_probability_score."
        )
    if mask is not None and mask.shape != scores.shape:
        raise ValueError(f"auroc: the mask of {name} must have shape {scores.shape}, got {mask.shape}.")


@jax.jit
def auroc(
    scores_in: jax.Array,
    scores_out: jax.Array,
    *,
    mask_in: jax.Array | None = None,
    mask_out: jax.Array | None = None,
) -> jax.Array:
    """Area under the ROC curve for separating in- from out-of-distribution scores.

    Equals the Mann-Whitney statistic ``P(s_in > s_out) + P(s_in = s_out) / 2`` over all
    (in, out) pairs, weighted by ``mask_in_i * mask_out_j``; ties count one half, as in
    ``sklearn.metrics.roc_auc_score`` with in-distribution as the positive class. Costs one sort
    of ``scores_out`` and a binary search per in-distribution score.

    Args:
      scores_in: ``[N_in]`` scores of in-distribution inputs.
      scores_out: ``[N_out]`` scores of out-of-distribution inputs.
      mask_in: optional ``[N_in]`` weights (0 for padding).
      mask_out: optional ``[N_out]`` weights (0 for padding).

    Returns:
      Scalar AUROC in ``[0, 1]``.
    """
    _check_scores("scores_in", scores_in, mask_in)
    _check_scores("scores_out", scores_out, mask_out)
    dtype = jnp.promote_types(_common.float_dtype(scores_in), _common.float_dtype(scores_out))
    scores_in, scores_out = scores_in.astype(dtype), scores_out.astype(dtype)
    weights_in = _common.example_weights(mask_in, scores_in.shape[0], dtype)
    weights_out = _common.example_weights(mask_out, scores_out.shape[0], dtype)

    order = jnp.argsort(scores_out)
    sorted_out = scores_out[order]
    cumulative = jnp.concatenate([jnp.zeros((1,), dtype), jnp.cumsum(weights_out[order])])
    below = cumulative[jnp.searchsorted(sorted_out, scores_in, side="left")]
    at_or_below = cumulative[jnp.searchsorted(sorted_out, scores_in, side="right")]
    wins = jnp.sum(weights_in * (below + at_or_below)) / 2
    return wins / (_common.safe_total(weights_in) * _common.safe_total(weights_out))


def misclassification_auroc(probs: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """AUROC of the maximum probability for telling correct from wrong predictions.

    The AUROC of Möllenhoff & Khan (2022, arXiv:2210.01620), Tables 1-2, which follows Osawa et al.
    (2019, arXiv:1906.02506), App. H: correctly classified test inputs are the positives,
    misclassified ones the negatives, and the score is the confidence ``max_k p_k``. This is the
    exact area (Mann-Whitney, ties one half); the authors' code approximates it with 2,500
    confidence thresholds and the trapezoidal rule.

    Args:
      probs: ``[N, K]`` predictive probabilities.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights.

    Returns:
      Scalar AUROC in ``[0, 1]``; NaN when every prediction is right or every one is wrong.
    """
    confidence = max_probability_score(probs)
    weights = _common.example_weights(mask, probs.shape[0], confidence.dtype)
    correct = (jnp.argmax(probs, axis=-1) == labels).astype(confidence.dtype)
    positives, negatives = weights * correct, weights * (1 - correct)
    area = auroc(confidence, confidence, mask_in=positives, mask_out=negatives)
    defined = (jnp.sum(positives) > 0) & (jnp.sum(negatives) > 0)
    return jnp.where(defined, area, jnp.nan)


@_common.checked_jit()
def one_vs_rest_auroc(probs: jax.Array, labels: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Multi-class AUROC: macro average over classes of the one-vs-rest AUROC of ``p_k``.

    For each class ``k`` the score ``p_ik`` separates the examples labelled ``k`` (positives) from
    all others (negatives), as in :func:`auroc` (Mann-Whitney, ties one half, pairs weighted by
    ``mask_i * mask_j``); the result is the unweighted mean over classes, i.e.
    ``sklearn.metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")``. A class
    with no positive or no negative example of non-zero weight has no AUROC and is left out of the
    mean (sklearn raises instead). We assume this is the "AUROC" column of Tan et al. (2025,
    arXiv:2505.23866), Table 3: its values of 98-99% on CIFAR-10 exceed what a misclassification
    AUROC (:func:`misclassification_auroc`) reaches. Costs one sort of each column of ``probs``.

    Args:
      probs: ``[N, K]`` predictive probabilities.
      labels: ``[N]`` integer labels.
      mask: optional ``[N]`` example weights (0 for padding).

    Returns:
      Scalar AUROC in ``[0, 1]``; NaN when no class has both a positive and a negative example.
    """
    _common.check_predictions("one_vs_rest_auroc", probs, labels, mask)
    dtype = _common.float_dtype(probs)
    probs = probs.astype(dtype)
    weights = _common.example_weights(mask, labels.shape[0], dtype)
    is_class = (labels[:, None] == jnp.arange(probs.shape[1])).astype(dtype)  # [N, K]
    positives, negatives = weights[:, None] * is_class, weights[:, None] * (1 - is_class)
    per_class = jax.vmap(lambda s, pos, neg: auroc(s, s, mask_in=pos, mask_out=neg), in_axes=1)(
        probs, positives, negatives
    )
    defined = (jnp.sum(positives, axis=0) > 0) & (jnp.sum(negatives, axis=0) > 0)
    num_defined = jnp.sum(defined)
    mean = jnp.sum(jnp.where(defined, per_class, 0)) / jnp.maximum(num_defined, 1)
    return jnp.where(num_defined > 0, mean, jnp.nan)
