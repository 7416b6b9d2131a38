"""Matrix-free curvature products over parameter pytrees: Hessian and Gauss-Newton.

Two forms of each product:

* ``hvp`` / ``gnvp`` compute one product from scratch (forward-over-reverse, as in
  Pearlmutter 1994). Use them for a single product.
* ``hessian_operator`` / ``gauss_newton_operator`` linearise once and return a ``matvec``; every
  later product reuses the stored forward (and backward) residuals, so an iterative solver pays
  for the primal pass once instead of once per product.

Models with BatchNorm are handled by the caller: ``apply_fn(params, x)`` closes over the running
statistics and applies the model in inference mode, so the curvature is that of the function the
model computes at evaluation time (no dependence of the normalisation on the batch).
"""

from collections.abc import Callable
from typing import Any

import jax

Params = Any
Batch = dict[str, jax.Array]
Matvec = Callable[[Params], Params]


def hvp(loss_fn: Callable[[Params], jax.Array], params: Params, v: Params) -> Params:
    """Hessian-vector product ``H v`` with ``H = d^2 loss_fn / d params^2`` (forward-over-reverse).

    Args:
      loss_fn: scalar loss as a function of ``params`` alone (close over the batch).
      params: parameter pytree at which the Hessian is taken.
      v: pytree with the structure of ``params``.

    Returns:
      ``H v``, a pytree with the structure of ``params``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def hessian_operator(loss_fn: Callable[[Params], jax.Array], params: Params) -> Matvec:
    """Returns ``v -> H v`` at ``params``, linearising ``grad(loss_fn)`` once (see module docstring).

    Args:
      loss_fn: scalar loss as a function of ``params`` alone.
      params: parameter pytree at which the Hessian is taken.

    Returns:
      A linear ``matvec`` mapping a params-shaped pytree to ``H v``.
    """
    _, matvec = jax.linearize(jax.grad(loss_fn), params)
    return matvec


def gauss_newton_operator(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    loss_from_logits: Callable[[jax.Array, jax.Array], jax.Array],
    params: Params,
    batch: Batch,
) -> Matvec:
    """Returns ``v -> J^T H_out J v``, the generalised Gauss-Newton product (Schraudolph 2002).

    ``J`` is the Jacobian of the logits of ``batch["image"]`` w.r.t. ``params`` and ``H_out`` the
    Hessian of ``loss_from_logits(logits, batch["label"])`` w.r.t. the logits; for the mean
    cross-entropy ``H_out`` is ``(diag(p) - p p^T) / B`` per example, the ``H_z(p)`` of Morosini
    et al. (2026, "Too Sharp, Too Sure: When Calibration Follows Curvature", arXiv:2604.20614,
    Sec. 4); for the mean MSE it is ``I / B``. The model is linearised once, so each product costs
    one linear forward and one transposed pass.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` in inference mode.
      loss_from_logits: ``loss(logits, labels) -> scalar mean`` (e.g. ``sam_jax.losses.mse``).
      params: parameter pytree.
      batch: ``{"image": [B, ...], "label": [B]}``.

    Returns:
      A linear ``matvec`` mapping a params-shaped pytree to ``G v``.
    """
    logits, jvp_fn = jax.linearize(lambda p: apply_fn(p, batch["image"]), params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    output_grad = jax.grad(lambda z: loss_from_logits(z, batch["label"]))
    _, output_hvp = jax.linearize(output_grad, logits)

    def matvec(v: Params) -> Params:
        return vjp_fn(output_hvp(jvp_fn(v)))[0]

    return matvec


def gnvp(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    loss_from_logits: Callable[[jax.Array, jax.Array], jax.Array],
    params: Params,
    batch: Batch,
    v: Params,
) -> Params:
    """Gauss-Newton-vector product ``J^T H_out J v`` (see ``gauss_newton_operator``).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` in inference mode.
      loss_from_logits: ``loss(logits, labels) -> scalar mean``.
      params: parameter pytree.
      batch: ``{"image": [B, ...], "label": [B]}``.
      v: pytree with the structure of ``params``.

    Returns:
      ``G v``, a pytree with the structure of ``params``.
    """
    return gauss_newton_operator(apply_fn, loss_from_logits, params, batch)(v)
