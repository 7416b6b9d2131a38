"""Curvature tracked during training: the config block, its validation, and the tracker factory.

The train loop calls ``tracker(params, model_state, images, labels, key)`` every
``config.every`` steps on a fixed, seeded subset of the training set that it picks (``seed`` and
``subset_size`` below); every quantity is computed on all of that subset, as one batch, except
batch sharpness, which splits it into mini-batches of the training batch size. The model is
evaluated in inference mode: BatchNorm uses the running statistics in ``model_state``.

References:
  Andreyev & Beneventano, 2024. Edge of Stochastic Stability: Revisiting the Edge of Stability for
  SGD. arXiv:2412.20553.
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree

from sam_jax.curvature import (
    batch_sharpness,
    eigenvalues,
    gauss_newton_operator,
    hessian_operator,
    hutchinson_trace,
    ritz_pairs,
    stochastic_lanczos_quadrature,
)
from sam_jax.optim import ascent_perturbation

QUANTITIES = ("hessian", "gauss_newton", "hessian_min", "batch_sharpness", "trace", "density")
# The top-eigenvalue quantities: tolerance, warm starts and reference checks apply to them.
TOP_EIGENVALUE_QUANTITIES = ("hessian", "gauss_newton")
# A warm start is the sum of the previous Ritz vectors plus this much (in norm) of a fresh random
# direction, so that the Krylov space has some of every direction from its first vector.
WARM_START_NOISE = 0.1
# The reference estimate of ``reference_every`` runs this many times ``num_iters`` steps, cold.
REFERENCE_ITERS_FACTOR = 3

Params = Any
Tracker = Callable[..., dict[str, float | list[float]]]


def default_curvature_config() -> ml_collections.ConfigDict:
    """Returns the default ``curvature`` block of a run config (tracking off: ``every = 0``).

    Fields:
      every: track every this many steps; 0 turns tracking off.
      quantities: comma-separated subset of ``QUANTITIES``.
      top_k: number of top Hessian / Gauss-Newton eigenvalues.
      num_iters: Lanczos steps per eigenvalue computation (the maximum when ``tolerance > 0``).
      tolerance: relative accuracy at which the top-eigenvalue Lanczos runs stop early: the Ritz
        residual norms, which bound the eigenvalue errors (``sam_jax.curvature.ritz_pairs``), below
        ``tolerance`` times the values; 0 runs all ``num_iters`` steps.
      warm_start: start each top-eigenvalue Lanczos run from the previous tracking point's top
        Ritz vectors (their sum, guard vectors included, plus ``WARM_START_NOISE`` of a random
        direction) instead of a random vector; the spectrum moves little between tracking points,
        so with a tolerance fewer steps are needed. A resumed run starts cold once.
      guard_vectors: with ``warm_start``, this many Ritz pairs below the ``top_k`` ones are also
        converged to ``tolerance`` and carried into the next start vector (the guard vectors of
        block eigensolvers). A warm start from the old top vector alone has almost nothing of an
        eigenvector that overtakes it between two points, and Lanczos then converges, residual
        within tolerance, to the runner-up; carrying the runner-up's vector keeps the overtaking
        direction in the start. 0 carries only the ``top_k`` vectors.
      guard_tolerance: the relative accuracy to which the guard vectors are converged; 0 means
        ``tolerance``. A looser one costs fewer steps and still carries the runner-up's direction.
      reference_every: every this many tracking calls (0: never) also compute the top eigenvalue
        cold with ``REFERENCE_ITERS_FACTOR * num_iters`` steps and no tolerance, logged as
        ``<quantity>_top1_reference``: the check that the tracked estimate has converged.
      subset_size: training examples the loop feeds the tracker; 0 = the full training set.
      seed: seed with which the loop picks the subset.
      trace_probes: Rademacher probes of the Hutchinson trace.
      density_probes: probes of stochastic Lanczos quadrature.
      density_iters: Lanczos steps per density probe.
    """
    config = ml_collections.ConfigDict()
    config.every = 0
    config.quantities = "hessian,gauss_newton,batch_sharpness"
    config.top_k = 1
    config.num_iters = 30
    config.tolerance = 0.0
    config.warm_start = False
    config.guard_vectors = 1
    config.guard_tolerance = 0.0
    config.reference_every = 0
    config.subset_size = 1000
    config.seed = 0
    config.trace_probes = 10
    config.density_probes = 1
    config.density_iters = 80
    return config


def validate_curvature_config(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Checks a ``curvature`` config block and returns its quantities as a tuple.

    Args:
      config: a block shaped like ``default_curvature_config()``.

    Returns:
      The requested quantities, in the order given.

    Raises:
      ValueError: on an unknown field or quantity, or a count out of range.
    """
    unknown = set(config.keys()) - set(default_curvature_config().keys())
    if unknown:
        raise ValueError(
            f"Unknown curvature config fields {sorted(unknown)}; the fields are "
            f"{sorted(default_curvature_config().keys())}."
        )
    quantities = tuple(q.strip() for q in config.quantities.split(",") if q.strip())
    bad = [q for q in quantities if q not in QUANTITIES]
    if bad or not quantities:
        raise ValueError(
            f"curvature.quantities={config.quantities!r} must be a comma-separated, nonempty subset of {QUANTITIES}."
        )
    minimums = {
        "every": 0,
        "top_k": 1,
        "num_iters": 1,
        "tolerance": 0.0,
        "guard_vectors": 0,
        "guard_tolerance": 0.0,
        "reference_every": 0,
        "subset_size": 0,
        "trace_probes": 2,
        "density_probes": 1,
        "density_iters": 1,
    }
    for field, minimum in minimums.items():
        if config[field] < minimum:
            raise ValueError(f"curvature.{field}={config[field]} must be >= {minimum}.")
    if config.top_k > config.num_iters:
        raise ValueError(
            f"curvature.top_k={config.top_k} exceeds num_iters={config.num_iters}: Lanczos finds at "
            "most num_iters eigenvalues; raise num_iters (about 30 + 10 per eigenvalue)."
        )
    if config.warm_start and config.top_k + config.guard_vectors > config.num_iters:
        raise ValueError(
            f"curvature.top_k={config.top_k} plus guard_vectors={config.guard_vectors} exceeds "
            f"num_iters={config.num_iters}: raise num_iters or lower guard_vectors."
        )
    return quantities


def _minibatches(images: jax.Array, labels: jax.Array, batch_size: int, key: jax.Array):
    """Splits a random permutation of the subset into ``n // batch_size`` mini-batches."""
    num_batches = images.shape[0] // batch_size
    if num_batches == 0:
        raise ValueError(
            f"batch_sharpness needs at least batch_size={batch_size} examples, got "
            f"{images.shape[0]}; raise curvature.subset_size."
        )
    order = jax.random.permutation(key, images.shape[0])[: num_batches * batch_size]
    shape = (num_batches, batch_size)
    return {"image": images[order].reshape(shape + images.shape[1:]), "label": labels[order].reshape(shape)}


def warm_start_vector(previous: Params, key: jax.Array) -> Params:
    """A Lanczos start: ``previous`` (e.g. the sum of the last tracking point's Ritz vectors) plus
    ``WARM_START_NOISE`` (in norm) of a random unit direction; that random direction alone when
    ``previous`` is all zero (a cold start)."""
    flat, unravel = ravel_pytree(previous)
    noise = jax.random.normal(key, flat.shape, flat.dtype)
    noise = noise / jnp.linalg.norm(noise)
    return unravel(jnp.where(jnp.linalg.norm(flat) > 0, flat + WARM_START_NOISE * noise, noise))


def make_curvature_tracker(
    config: ml_collections.ConfigDict,
    model_apply: Callable[[Params, Any, jax.Array], jax.Array],
    loss_fn: Callable[..., jax.Array],
    *,
    batch_size: int,
    perturbation_rho: float | None = None,
) -> Tracker:
    """Builds the curvature hook of the train loop; its computation is jitted once per shape.

    Metric keys (all under ``curvature/``):
      ``hessian_top{i}`` / ``gauss_newton_top{i}`` for ``i = 1..top_k``: top eigenvalues of the
      Hessian / Gauss-Newton matrix of the subset loss, with ``hessian_lanczos_steps`` /
      ``gauss_newton_lanczos_steps`` (matrix-vector products used) and ``..._relative_residual``
      (the top Ritz pair's residual norm over its value: a bound on its relative error), and
      every ``reference_every`` calls ``..._top1_reference`` (see ``default_curvature_config``);
      ``hessian_min``: smallest Hessian eigenvalue; ``batch_sharpness``: Andreyev & Beneventano's
      ``E_B[g^T H g / g^T g]``;
      ``hessian_trace`` and ``hessian_trace_stderr``: Hutchinson; ``density_nodes`` and
      ``density_weights``: SLQ nodes and weights of all probes concatenated, the weights divided
      by the number of probes so that they sum to 1. With ``perturbation_rho`` (SAM-family runs;
      Tan et al. 2025, arXiv:2505.23866, Lemma 1 and Figure 2a): ``kappa_min_theta`` and
      ``kappa_min_perturbed``, the smallest Hessian eigenvalue at ``theta`` and at the SAM point
      ``theta + sam_jax.optim.ascent_perturbation(g, theta, rho)`` (``rho g / ||g||``, ``g`` the
      subset gradient; ``theta`` itself when ``g = 0``), and ``kappa_min_bound = -||g|| / rho``,
      the lower bound the lemma assumes on them.

    Args:
      config: the ``curvature`` block (see ``default_curvature_config``); validated here.
      model_apply: ``model_apply(params, model_state, x) -> logits`` in inference mode.
      loss_fn: ``loss_fn(logits, labels, mask=None) -> scalar mean``.
      batch_size: training mini-batch size, used by batch sharpness.
      perturbation_rho: SAM radius; when given, the ``kappa_min`` metrics are added.

    Returns:
      ``tracker(params, model_state, images, labels, key) -> dict[str, float | list[float]]``.
    """
    quantities = validate_curvature_config(config)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if perturbation_rho is not None and perturbation_rho <= 0:
        raise ValueError(f"perturbation_rho={perturbation_rho} must be > 0 (or None for non-SAM runs).")
    if "batch_sharpness" in quantities and 0 < config.subset_size < batch_size:
        raise ValueError(
            f"batch_sharpness needs curvature.subset_size={config.subset_size} >= batch_size="
            f"{batch_size} (or 0 for the full training set)."
        )
    top_k, num_iters = config.top_k, config.num_iters
    guards = config.guard_vectors if config.warm_start else 0
    # One tolerance per converged pair: every tracked pair to ``tolerance``, the guard pairs below
    # them to their own.
    tolerances = (config.tolerance,) * top_k + (config.guard_tolerance or config.tolerance,) * guards
    tracked_tops = [q for q in TOP_EIGENVALUE_QUANTITIES if q in quantities]

    def smallest_eigenvalue(matvec, params, key):
        return eigenvalues(matvec, params, k=1, num_iters=num_iters, which="smallest", key=key)[0][0]

    def operators(params, model_state, images, labels):
        """The subset loss and the Hessian and Gauss-Newton products at ``params``."""
        subset = {"image": images, "label": labels}

        def subset_loss(p):
            return loss_fn(model_apply(p, model_state, images), labels)

        tops = {
            "hessian": lambda: hessian_operator(subset_loss, params),
            "gauss_newton": lambda: gauss_newton_operator(
                lambda p, x: model_apply(p, model_state, x), loss_fn, params, subset
            ),
        }
        return subset_loss, tops

    def compute(params, model_state, images, labels, key, previous):
        def batch_loss(p, batch):
            return loss_fn(model_apply(p, model_state, batch["image"]), batch["label"])

        subset_loss, tops = operators(params, model_state, images, labels)
        hessian = tops["hessian"]()
        tops["hessian"] = lambda: hessian  # one linearisation for every Hessian quantity
        keys = dict(zip(QUANTITIES + ("kappa",), jax.random.split(key, len(QUANTITIES) + 1)))
        metrics, vectors = {}, {}
        for name in tracked_tops:
            v0 = warm_start_vector(previous[name], keys[name]) if config.warm_start else None
            pairs = ritz_pairs(
                tops[name](),
                params,
                k=len(tolerances),
                num_iters=num_iters,
                key=keys[name],
                v0=v0,
                tol=tolerances,
            )
            metrics.update({f"curvature/{name}_top{i + 1}": pairs.values[i] for i in range(top_k)})
            metrics[f"curvature/{name}_lanczos_steps"] = pairs.num_steps
            metrics[f"curvature/{name}_relative_residual"] = pairs.residual_norms[0] / jnp.abs(pairs.values[0])
            vectors[name] = jax.tree.map(lambda v: v.sum(axis=0), pairs.vectors)
        if "hessian_min" in quantities or perturbation_rho is not None:
            kappa_min = smallest_eigenvalue(hessian, params, keys["hessian_min"])
            if "hessian_min" in quantities:
                metrics["curvature/hessian_min"] = kappa_min
        if perturbation_rho is not None:
            grad = jax.grad(subset_loss)(params)
            perturbed = optax.apply_updates(params, ascent_perturbation(grad, params, perturbation_rho))
            metrics["curvature/kappa_min_theta"] = kappa_min
            metrics["curvature/kappa_min_perturbed"] = smallest_eigenvalue(
                hessian_operator(subset_loss, perturbed), perturbed, keys["kappa"]
            )
            metrics["curvature/kappa_min_bound"] = -optax.tree.norm(grad) / perturbation_rho
        if "batch_sharpness" in quantities:
            batches = _minibatches(images, labels, batch_size, keys["batch_sharpness"])
            metrics["curvature/batch_sharpness"] = batch_sharpness(batch_loss, params, batches)
        if "trace" in quantities:
            estimate, stderr = hutchinson_trace(hessian, params, num_probes=config.trace_probes, key=keys["trace"])
            metrics["curvature/hessian_trace"] = estimate
            metrics["curvature/hessian_trace_stderr"] = stderr
        if "density" in quantities:
            nodes, weights = stochastic_lanczos_quadrature(
                hessian, params, num_probes=config.density_probes, num_iters=config.density_iters, key=keys["density"]
            )
            metrics["curvature/density_nodes"] = nodes.ravel()
            metrics["curvature/density_weights"] = weights.ravel() / config.density_probes
        return metrics, vectors

    def reference(params, model_state, images, labels, key):
        _, tops = operators(params, model_state, images, labels)
        return {
            f"curvature/{name}_top1_reference": eigenvalues(
                tops[name](), params, k=1, num_iters=REFERENCE_ITERS_FACTOR * num_iters, key=key
            )[0][0]
            for name in tracked_tops
        }

    compiled, compiled_reference = jax.jit(compute), jax.jit(reference)
    previous: dict[str, Params] = {}
    calls = [0]

    def tracker(params, model_state, images, labels, key) -> dict[str, float | list[float]]:
        if not previous:
            previous.update({name: jax.tree.map(jnp.zeros_like, params) for name in tracked_tops})
        metrics, vectors = compiled(params, model_state, images, labels, key, dict(previous))
        if config.warm_start:
            previous.update(vectors)
        if config.reference_every and tracked_tops and calls[0] % config.reference_every == 0:
            metrics.update(compiled_reference(params, model_state, images, labels, jax.random.fold_in(key, 1)))
        calls[0] += 1
        metrics = jax.device_get(metrics)
        return {name: value.tolist() if value.ndim else float(value) for name, value in metrics.items()}

    return tracker
