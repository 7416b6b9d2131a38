"""Input checks and weighted reductions shared by the calibration metrics.

Every metric accepts ``mask=None`` or a ``[N]`` array of non-negative weights (1 for a real
example, 0 for padding); an example of weight 0 has no effect on any metric, so a padded
evaluation batch gives the value of the unpadded one.
"""

import functools
import inspect
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from sam_jax.losses.validation import check_labels, check_probabilities, is_concrete


def check_predictions(
    name: str, predictions: jax.Array, labels: jax.Array, mask: jax.Array | None, *, probabilities: bool = True
) -> None:
    """Raises ``ValueError`` unless ``predictions [N, K>=2]``, ``labels [N]``, ``mask [N]`` agree.

    Outside ``jit`` it also checks the values: every unmasked label in ``[0, K)`` and, when
    ``probabilities``, every unmasked row a distribution (finite, non-negative, summing to 1).
    Under ``jit`` the values are tracers and only the shapes are checked.
    """
    if predictions.ndim != 2 or predictions.shape[0] < 1 or predictions.shape[1] < 2:
        raise ValueError(
            f"{name}: expected predictions of shape [N, K] with N >= 1 examples "
            f"and K >= 2 classes, got shape {predictions.shape}; pass one row per "
            "example."
        )
    if labels.shape != predictions.shape[:1]:
        raise ValueError(
            f"{name}: labels must have shape [N] = {predictions.shape[:1]}, got "
            f"{labels.shape}; pass integer class indices, not one-hot rows."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}.")
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"{name}: mask must have shape [N] = {labels.shape}, got {mask.shape}.")
    check_labels(labels, predictions.shape[1], mask=mask, where=name)
    if probabilities:
        check_probabilities(predictions, mask=mask, where=name)


def checked_jit(
    *, static_argnames: Sequence[str] = (), probabilities: bool = True
) -> Callable[[Callable[..., jax.Array]], Callable[..., jax.Array]]:
    """``jax.jit`` for a metric ``fn(predictions, labels, ..., mask=None)`` that checks values first.

    Inside ``jit`` a label outside ``[0, K)`` or a row that is not a distribution cannot raise, so
    the returned function checks them on the host (``check_predictions``'s value checks) before it
    calls the compiled metric. Called from inside another ``jit`` the inputs are tracers and only
    the shape checks at trace time remain; such callers check their inputs themselves.

    Args:
      static_argnames: passed to ``jax.jit``.
      probabilities: whether the first argument holds probabilities (else logits).
    """

    def decorate(fn: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        compiled = jax.jit(fn, static_argnames=static_argnames)
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs) -> jax.Array:
            arguments = signature.bind(*args, **kwargs).arguments
            predictions, labels = list(arguments.values())[:2]
            mask = arguments.get("mask")
            if is_concrete(predictions, labels, mask):
                check_predictions(
                    fn.__name__,
                    jnp.asarray(predictions),
                    jnp.asarray(labels),
                    None if mask is None else jnp.asarray(mask),
                    probabilities=probabilities,
                )
            return compiled(*args, **kwargs)

        return checked

    return decorate


def check_num_bins(name: str, num_bins: int) -> None:
    """Raises ``ValueError`` unless ``num_bins`` is a positive Python integer."""
    if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"{name}: num_bins must be a positive int, got {num_bins!r}.")


def float_dtype(x: jax.Array) -> jnp.dtype:
    """Floating dtype for accumulations: the input's, but never narrower than float32."""
    return jnp.promote_types(x.dtype, jnp.float32)


def example_weights(mask: jax.Array | None, num_examples: int, dtype: jnp.dtype) -> jax.Array:
    """Per-example weights ``[N]``: ones when ``mask`` is None, else ``mask`` cast to ``dtype``."""
    if mask is None:
        return jnp.ones((num_examples,), dtype)
    return mask.astype(dtype)


def safe_total(weights: jax.Array) -> jax.Array:
    """Sum of the weights, replaced by 1 when it is 0 so that an empty set gives 0, not NaN.

    The denominator of the metrics that divide a sum other than ``sum(w * v)`` by the total weight
    (ECE, classwise ECE, KCE); per-example means use ``sam_jax.losses.classification.masked_mean``,
    which has the same empty-set rule.
    """
    total = jnp.sum(weights)
    return jnp.where(total > 0, total, jnp.ones_like(total))


def top_label(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Confidence ``max_k p_k`` and prediction ``argmax_k p_k`` (first index on ties)."""
    prediction = jnp.argmax(probs, axis=-1)
    # Reading the maximum at the argmax costs N gathers instead of a second pass over [N, K].
    return true_class_values(probs, prediction), prediction


def true_class_values(values: jax.Array, labels: jax.Array) -> jax.Array:
    """``values[i, labels[i]]`` for each row ``i``."""
    return jnp.take_along_axis(values, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
