"""Host-side checks of labels and probabilities, shared by the losses and the calibration metrics.

A label outside ``[0, K)`` does not fail inside XLA: a one-hot of it is all zeros and a gather
clamps or wraps it, so cross-entropy turns into NaN and ECE or Brier come out silently wrong. These
checks raise a ``ValueError`` naming the bad value instead. They run only on concrete arrays: under
``jax.jit`` the inputs are tracers and the check is skipped, so jitted callers (the train loop)
check their batches on the host before the call.
"""

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(*arrays: jax.Array | None) -> bool:
    """True when none of ``arrays`` is a tracer (the call is not being traced by ``jit``/``grad``)."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_labels(labels: jax.Array, num_classes: int, *, mask: jax.Array | None = None, where: str = "labels") -> None:
    """Raises ``ValueError`` unless every (unmasked) label is an integer in ``[0, num_classes)``.

    Args:
      labels: integer class indices ``[N]`` (NumPy or JAX).
      num_classes: the number of classes K.
      mask: optional ``[N]`` weights; examples of weight 0 (padding) are not checked.
      where: what to call the labels in the message (e.g. the function that received them).
    """
    if not is_concrete(labels, mask):
        return
    values = np.asarray(labels)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integer class indices, got dtype {values.dtype}.")
    bad = (values < 0) | (values >= num_classes)
    if mask is not None:
        bad &= np.asarray(mask) > 0
    if bad.any():
        index = np.flatnonzero(bad.reshape(-1))
        raise ValueError(
            f"{where}: label {values.reshape(-1)[index[0]]} at index {index[0]} is outside "
            f"[0, {num_classes}) ({index.size} bad labels of {values.size}); labels must be class "
            f"indices 0..{num_classes - 1}."
        )


def check_probabilities(
    probs: jax.Array, *, mask: jax.Array | None = None, atol: float = 1e-3, where: str = "probabilities"
) -> None:
    """Raises ``ValueError`` unless every (unmasked) row of ``probs [N, K]`` is a distribution.

    A row is a distribution when it is finite, non-negative and sums to 1 within ``atol``. The
    reductions run on the device; only three scalars come back to the host.
    """
    if not is_concrete(probs, mask):
        return
    probs = jnp.asarray(probs)
    rows = jnp.ones(probs.shape[:1], bool) if mask is None else jnp.asarray(mask) > 0
    not_finite = rows & ~jnp.all(jnp.isfinite(probs), axis=-1)
    negative = rows & jnp.any(probs < 0, axis=-1)
    off_sum = rows & (jnp.abs(jnp.sum(probs, axis=-1, dtype=jnp.float32) - 1.0) > atol)
    for problem, what in (
        (not_finite, "contains NaN or inf"),
        (negative, "has a negative entry"),
        (off_sum, f"does not sum to 1 (tolerance {atol})"),
    ):
        if bool(jnp.any(problem)):
            index = int(jnp.argmax(problem))
            raise ValueError(
                f"{where}: row {index} {what}: {np.asarray(probs[index])[:10]}; pass probabilities "
                "(e.g. softmax of the logits), not logits or unnormalised scores."
            )
