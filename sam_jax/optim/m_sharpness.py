"""m-sharpness SAM: one perturbation per sub-batch of m examples, on one device.

Foret et al. (2020) compute the SAM perturbation separately on each of the ``S = B / m``
sub-batches of a batch of ``B`` examples and average the descent gradients; small ``m`` generalises
and calibrates better (Tan et al. 2025, Lemma 2 and Theorem 2 analyse this m-SAM).
``m = B`` is plain SAM. The sub-batches are evaluated with ``vmap``, not on separate devices.

References:
  Foret, Kleiner, Mobahi & Neyshabur, 2020. Sharpness-Aware Minimization for Efficiently
  Improving Generalization. ICLR 2021, arXiv:2010.01412.
  Tan, Zhou, Ye, Dai, Liu, Song, Zhang, Zhao, Hao & Xu, 2025. Towards Understanding the
  Calibration Benefits of Sharpness-Aware Minimization. ICLR 2026, arXiv:2505.23866.
"""

import jax
import jax.numpy as jnp
import optax

from sam_jax.optim.sam import ScalarOrSchedule, ascent_perturbation, match_norm, sharpness_aware_transformation


def split_into_sub_batches(batch: dict[str, jax.Array], m: int) -> dict[str, jax.Array]:
    """Reshapes every ``[B, ...]`` array of ``batch`` to ``[B // m, m, ...]``.

    Args:
      batch: dict of arrays sharing the leading batch size ``B``.
      m: examples per sub-batch; must divide ``B``.

    Returns:
      The same keys, each with a leading sub-batch axis ``S = B // m``.

    Raises:
      ValueError: when ``m < 1``, ``m`` does not divide ``B``, or the arrays disagree on ``B``.
    """
    sizes = {name: value.shape[0] for name, value in batch.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"All batch arrays need the same leading size, got {sizes}.")
    batch_size = next(iter(sizes.values()))
    if m < 1 or batch_size % m:
        raise ValueError(
            f"optimizer.m={m} must be a positive divisor of the batch size {batch_size}; "
            f"choose m from {[d for d in range(1, batch_size + 1) if batch_size % d == 0]}."
        )
    return {name: value.reshape((batch_size // m, m) + value.shape[1:]) for name, value in batch.items()}


def m_sharpness_sam(
    base: optax.GradientTransformation,
    rho: ScalarOrSchedule,
    *,
    adaptive: bool = False,
    eta: float = 0.0,
    renormalize: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """SAM with a separate perturbation per sub-batch (m-sharpness, Foret et al. 2020, Sec. 4.1).

    ``update(stacked_grads, state, params, grad_fn=stacked_grad_fn)``: ``stacked_grads`` has a
    leading axis ``S``, entry ``i`` the gradient of sub-batch ``i`` at ``params``;
    ``stacked_grad_fn(stacked_params)`` evaluates sub-batch ``i`` at ``stacked_params[i]`` (e.g.
    ``jax.vmap(jax.grad(loss))(stacked_params, sub_batches)``). Sub-batch ``i`` is perturbed by
    ``e_i = ascent_perturbation(g_i)`` (the function ``sam`` uses, vmapped); with ``renormalize``
    each descent gradient is rescaled to its own ``||g_i||``; the mean over ``i`` goes to ``base``.
    With ``S = 1`` this is exactly ``sam``.

    Args:
      base: optimizer that takes the descent step (weight decay belongs here).
      rho: perturbation radius >= 0 or an ``optax.Schedule`` of the step count.
      adaptive: ASAM perturbation per sub-batch.
      eta: ASAM offset >= 0.
      renormalize: SSAM rescale per sub-batch.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with ``SAMState``.

    Raises:
      ValueError: for ``rho < 0`` or ``eta < 0``.
    """
    perturb = jax.vmap(lambda g, w, r: ascent_perturbation(g, w, r, adaptive=adaptive, eta=eta), (0, None, None))

    def descent_gradient(stacked_grads, params, stacked_grad_fn, rho_t):
        perturbations = perturb(stacked_grads, params, rho_t)
        stacked_params = jax.tree.map(lambda w, e: w[None] + e, params, perturbations)
        descent = stacked_grad_fn(stacked_params)
        if renormalize:
            descent = jax.vmap(match_norm)(descent, stacked_grads)
        return jax.tree.map(lambda g: jnp.mean(g, axis=0), descent)

    return sharpness_aware_transformation(base, rho, descent_gradient, eta=eta)
