"""Sharpness measures: top Hessian and Gauss-Newton eigenvalues, and batch sharpness.

References:
  Cohen, Kaur, Li, Kolter & Talwalkar, 2021. Gradient Descent on Neural Networks Typically Occurs
  at the Edge of Stability. ICLR 2021, arXiv:2103.00065.
  Andreyev & Beneventano, 2024. Edge of Stochastic Stability: Revisiting the Edge of Stability for
  SGD. arXiv:2412.20553.
  Tan et al., 2025. Towards Understanding the Calibration Benefits of Sharpness-Aware
  Minimization. ICLR 2026, arXiv:2505.23866.
  Morosini, Gjika, Poggio & Beneventano, 2026. Too Sharp, Too Sure: When Calibration Follows
  Curvature. arXiv:2604.20614.

Like optax, these functions do not ``jax.jit`` themselves: they take callables, and a jit over a
callable argument would retrace for every new closure. Call them inside your own jitted function
(see "Tracking curvature in your own loop" in ``docs/curvature.md``).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sam_jax.curvature.lanczos import eigenvalues
from sam_jax.curvature.products import gauss_newton_operator, hessian_operator
from sam_jax.losses import cross_entropy

Params = Any
Batch = dict[str, jax.Array]


def hessian_sharpness(
    loss_fn: Callable[[Params, Batch], jax.Array],
    params: Params,
    batch: Batch,
    *,
    k: int = 1,
    num_iters: int = 30,
    which: str = "largest",
    key: jax.Array | None = None,
) -> jax.Array:
    """Top-``k`` Hessian eigenvalues of ``loss_fn(params, batch)`` (``lambda_max`` of Cohen et al. 2021).

    This is ``kappa_max`` of Tan et al. (2025, arXiv:2505.23866, Table S16); with
    ``which="smallest"`` it is ``kappa_min`` (their Lemma 1, Figure 2a).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: parameter pytree.
      batch: pytree of arrays passed to ``loss_fn``.
      k: number of eigenvalues.
      num_iters: Lanczos steps, i.e. Hessian-vector products.
      which: ``"largest"`` or ``"smallest"`` (algebraic).
      key: PRNG key of the Lanczos starting vector (``PRNGKey(0)`` when ``None``).

    Returns:
      ``[k]`` eigenvalues, most extreme first.
    """
    matvec = hessian_operator(lambda p: loss_fn(p, batch), params)
    return eigenvalues(matvec, params, k=k, num_iters=num_iters, which=which, key=key)[0]


def gauss_newton_sharpness(
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    params: Params,
    batch: Batch,
    *,
    loss_from_logits: Callable[[jax.Array, jax.Array], jax.Array] = cross_entropy,
    k: int = 1,
    num_iters: int = 30,
    key: jax.Array | None = None,
) -> jax.Array:
    """Top-``k`` eigenvalues of the Gauss-Newton matrix ``E[J^T H_z J]``.

    The GN sharpness ``lambda_max(H_GN)`` of Morosini et al. (2026, arXiv:2604.20614, Sec. 4, the
    definition before Theorem 4.1); with ``loss_from_logits=sam_jax.losses.mse`` it is the MSE
    variant of their Appendix D, where ``H_z`` is the identity.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` in inference mode (BatchNorm state closed over).
      params: parameter pytree.
      batch: ``{"image": [B, ...], "label": [B]}``.
      loss_from_logits: ``loss(logits, labels) -> scalar mean``; cross-entropy by default.
      k: number of eigenvalues.
      num_iters: Lanczos steps, i.e. Gauss-Newton-vector products.
      key: PRNG key of the Lanczos starting vector (``PRNGKey(0)`` when ``None``).

    Returns:
      ``[k]`` eigenvalues in descending order.
    """
    matvec = gauss_newton_operator(apply_fn, loss_from_logits, params, batch)
    return eigenvalues(matvec, params, k=k, num_iters=num_iters, key=key)[0]


def batch_sharpness(loss_fn: Callable[[Params, Batch], jax.Array], params: Params, batches: Batch) -> jax.Array:
    """Batch sharpness ``E_B[g_B^T H_B g_B / ||g_B||^2]``.

    Andreyev & Beneventano (2024, arXiv:2412.20553): the curvature of each mini-batch loss along
    its own gradient, averaged over mini-batches; Morosini et al. (2026, arXiv:2604.20614, Sec. 3,
    Table 1) track it next to GN sharpness. It is the quantity that SGD holds near
    ``2 / learning_rate`` at the edge of stochastic stability.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` for one mini-batch.
      params: parameter pytree.
      batches: the mini-batches stacked on a leading axis, e.g. ``{"image": [M, B, ...],
        "label": [M, B]}``; they are processed one after the other.

    Returns:
      Scalar mean over the ``M`` mini-batches.
    """

    def rayleigh_quotient(batch: Batch) -> jax.Array:
        grad, matvec = jax.linearize(jax.grad(lambda p: loss_fn(p, batch)), params)
        return optax.tree.vdot(grad, matvec(grad)) / optax.tree.vdot(grad, grad)

    return jnp.mean(jax.lax.map(rayleigh_quotient, batches))
