"""The ratio of SAM's descent-gradient norm to its ascent-gradient norm along training.

A SAM step (Foret et al. 2020, arXiv:2010.01412, eq. 2) takes ``g = grad L_B(w)``, perturbs to
``w + rho g / ||g||`` and descends along ``g~ = grad L_B(w + rho g / ||g||)``. Stable SAM (Tan et
al. 2024, arXiv:2401.07250, Algorithm 1) rescales ``g~`` to ``||g||``: it divides SAM's step by
``r = ||g~|| / ||g||``, so ``r`` is what SSAM removes. The tracker measures ``r`` (and the cosine
between ``g`` and ``g~``) on fixed mini-batches of the training set, at the current parameters,
with the model in inference mode (as ``sam_jax.training.hooks.curvature`` does).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sam_jax.optim import ascent_perturbation, global_norm

PREFIX = "sam_norms/"

Params = Any
ModelApply = Callable[[Params, Any, jax.Array], jax.Array]
Tracker = Callable[[Params, Any, jax.Array, jax.Array], dict[str, float]]


def descent_ascent_norms(loss: Callable[[Params], jax.Array], params: Params, rho: float) -> tuple[jax.Array, ...]:
    """``(||g||, ||g~||, cos(g, g~))`` of one SAM step on ``loss`` at ``params`` (module docstring).

    The ascent is ``sam_jax.optim.ascent_perturbation`` (``e = 0`` when ``g = 0``), the norm
    ``sam_jax.optim.global_norm``.
    """
    grad = jax.grad(loss)
    g = grad(params)
    descent = grad(jax.tree.map(jnp.add, params, ascent_perturbation(g, params, rho)))
    ascent_norm, descent_norm = global_norm(g), global_norm(descent)
    dot = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(descent)))
    return ascent_norm, descent_norm, dot / (ascent_norm * descent_norm)


def make_descent_norm_tracker(
    model_apply: ModelApply, loss_fn: Callable[..., jax.Array], rho: float, *, batch_size: int
) -> Tracker:
    """Builds ``tracker(params, model_state, images, labels) -> metrics``; jitted once per shape.

    ``images`` and ``labels`` hold ``k * batch_size`` examples, split into ``k`` consecutive
    mini-batches; each gives one ``r = ||g~|| / ||g||`` (the ratio a SAM step of that batch has).

    Metric keys (under ``sam_norms/``): ``ratio_mean``, ``ratio_std`` (ddof 0), ``ratio_min``,
    ``ratio_max`` over the ``k`` batches; ``ascent_norm_mean`` (``||g||``), ``descent_norm_mean``
    (``||g~||``) and ``cosine_mean`` (``cos(g, g~)``), means over the batches.

    Args:
      model_apply: ``model_apply(params, model_state, x) -> logits`` in inference mode.
      loss_fn: ``loss_fn(logits, labels) -> scalar mean`` (the training loss).
      rho: the SAM radius.
      batch_size: examples per mini-batch (the run's batch size).

    Raises:
      ValueError: on ``rho <= 0`` or ``batch_size < 1``.
    """
    if not rho > 0:
        raise ValueError(f"rho={rho} must be > 0: the descent gradient is taken at w + rho g / ||g||.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")

    def compute(params, model_state, images, labels):
        batches = len(labels) // batch_size
        images = images[: batches * batch_size].reshape((batches, batch_size) + images.shape[1:])
        labels = labels[: batches * batch_size].reshape((batches, batch_size) + labels.shape[1:])

        def one(batch):
            x, y = batch
            return descent_ascent_norms(lambda p: loss_fn(model_apply(p, model_state, x), y), params, rho)

        ascent, descent, cosine = jax.lax.map(one, (images, labels))
        ratio = descent / ascent
        metrics = {
            "ratio_mean": jnp.mean(ratio),
            "ratio_std": jnp.std(ratio),
            "ratio_min": jnp.min(ratio),
            "ratio_max": jnp.max(ratio),
            "ascent_norm_mean": jnp.mean(ascent),
            "descent_norm_mean": jnp.mean(descent),
            "cosine_mean": jnp.mean(cosine),
        }
        return {PREFIX + name: value for name, value in metrics.items()}

    compiled = jax.jit(compute)

    def tracker(params, model_state, images, labels) -> dict[str, float]:
        if len(labels) < batch_size:
            raise ValueError(f"The tracker needs at least one batch of {batch_size} examples; got {len(labels)}.")
        metrics = jax.device_get(compiled(params, model_state, images, labels))
        return {name: float(value) for name, value in metrics.items()}

    return tracker
