"""m-sharpness across devices: every device perturbs the weights with the gradient of its own shard.

Foret et al. (2020, Sec. 4.1) ran SAM data-parallel with ``pmap``: each accelerator
computed the ascent perturbation ``e_d = rho * g_d / ||g_d||`` from the gradient ``g_d`` of its
local shard of the batch, took the descent gradient at ``w + e_d`` on that same shard, and only the
descent gradients were averaged across devices. That is m-sharpness with ``m`` the per-device batch
``B / D``: this module evaluates the ``S`` sub-batches of ``m_sharpness_sam`` on the devices that
hold them (``device_vmap``), so the arithmetic stays that of ``m_sharpness_sam`` and ``sam`` (one
device, one sub-batch) and only its placement changes.

BatchNorm (in ``sam_jax.training.steps``): every sub-batch's forward pass normalises with that
sub-batch's own statistics, so each device uses its own shard's statistics, and the running
averages of the step are the mean over the sub-batches (an all-reduce across devices), identical
on every device. As BatchNorm's running average is linear in the batch statistics, this equals
keeping one running average per device and averaging them before evaluation, as the ``pmap`` code
of Foret et al. (google-research/sam) does.

References:
  Foret, Kleiner, Mobahi & Neyshabur, 2020. Sharpness-Aware Minimization for Efficiently
  Improving Generalization. ICLR 2021, arXiv:2010.01412.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from sam_jax.optim.m_sharpness import m_sharpness_sam, split_into_sub_batches

# The value of a SAM-family ``m`` hyper-parameter for one sub-batch per device (m = B / D).
PER_DEVICE = -1
# The mesh axis the loop splits the batch over.
DATA_AXIS = "data"


def unrolled_map(fn: Callable[..., Any], in_axes: Sequence[int | None]) -> Callable[..., Any]:
    """``jax.vmap(fn, in_axes)`` written out: ``fn`` traced once per entry, the outputs stacked.

    The same values as ``jax.vmap`` up to the order of float operations. On XLA:CPU a convolution
    whose weights carry a vmapped axis becomes a grouped convolution, about twice as slow as the
    separate ones (LeNet-5's train step with 8 sub-batches, each at its own weights:
    ``python -m benchmarks.sub_batch_map``); unrolled, each entry keeps the layouts of a plain step,
    at the price of compiling ``fn`` once per entry.
    """
    in_axes = tuple(in_axes)

    def mapped(*args: Any) -> Any:
        sizes = {x.shape[0] for arg, axis in zip(args, in_axes, strict=True) if axis == 0 for x in jax.tree.leaves(arg)}
        if len(sizes) != 1:
            raise ValueError(f"unrolled_map: the mapped arguments disagree on their leading size: {sorted(sizes)}.")

        def entry(i: int) -> Any:
            return fn(*(jax.tree.map(lambda x: x[i], arg) if axis == 0 else arg for arg, axis in zip(args, in_axes)))

        outputs = [entry(i) for i in range(sizes.pop())]
        return jax.tree.map(lambda *entries: jnp.stack(entries), *outputs)

    return mapped


def device_vmap(
    fn: Callable[..., Any],
    mesh: Mesh,
    in_axes: Sequence[int | None],
    *,
    axis_name: str = DATA_AXIS,
    map_fn: Callable[..., Callable[..., Any]] = jax.vmap,
) -> Callable[..., Any]:
    """``jax.vmap(fn, in_axes)`` with the mapped axis split over the devices of ``mesh``.

    The leading axis of every mapped argument (``in_axes`` entry 0) has ``S`` entries, ``S`` a
    multiple of the ``D`` devices along ``axis_name``; device ``d`` holds entries ``[d S/D, (d+1)
    S/D)`` (a batch split along ``axis_name`` of ``mesh`` is already laid out so) and evaluates
    ``fn`` on them with ``jax.vmap``; the outputs stay stacked and split the same way. Unmapped
    arguments (``None``) are given whole to every device.

    Derivatives taken inside ``fn`` are per device: the unmapped arguments are marked device-
    varying (``jax.lax.pcast``), since under ``shard_map``'s replication checks the transpose of
    the implicit broadcast of a replicated value is a ``psum``, which would turn each device's
    gradient with respect to shared parameters into the sum over devices.

    Example::

      per_shard_grads = device_vmap(jax.grad(loss), mesh, (None, 0))(params, sub_batches)

    Args:
      fn: the function of one entry.
      mesh: the device mesh (``jax.sharding.Mesh``) with an axis ``axis_name``.
      in_axes: per positional argument, 0 (mapped over its leading axis) or None (shared).
      axis_name: the mesh axis the entries are split over.
      map_fn: how a device maps ``fn`` over its entries: ``jax.vmap`` or ``unrolled_map``.

    Returns:
      The mapped function (positional arguments only), to call under ``jax.jit``.
    """
    in_axes = tuple(in_axes)

    def local(*args: Any) -> Any:
        args = tuple(
            arg if axis == 0 else jax.tree.map(lambda x: jax.lax.pcast(x, axis_name, to="varying"), arg)
            for arg, axis in zip(args, in_axes, strict=True)
        )
        return map_fn(fn, in_axes)(*args)

    in_specs = tuple(PartitionSpec(axis_name) if axis == 0 else PartitionSpec() for axis in in_axes)
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(axis_name))


def per_device_sam_gradient(
    loss_fn: Callable[[optax.Params, dict[str, jax.Array]], jax.Array],
    params: optax.Params,
    batch: dict[str, jax.Array],
    rho: float,
    mesh: Mesh,
    *,
    axis_name: str = DATA_AXIS,
    adaptive: bool = False,
    eta: float = 0.0,
    renormalize: bool = False,
) -> optax.Updates:
    """The SAM descent gradient with one perturbation per device, averaged across devices.

    Foret et al. 2020 (arXiv:2010.01412), eq. 2 per device shard ``b_d``:
    ``g_d = grad L_{b_d}(w)``, ``e_d = rho g_d / ||g_d||``, result ``mean_d grad L_{b_d}(w + e_d)``
    (ASAM's ``e_d`` when ``adaptive``, each descent gradient rescaled to ``||g_d||`` when
    ``renormalize``). Computed by ``m_sharpness_sam`` around ``optax.identity()`` with the
    sub-batches evaluated by ``device_vmap``; on one device it is the gradient ``sam`` descends.

    Example::

      grads = jax.jit(per_device_sam_gradient, static_argnums=(0, 4))(loss, params, batch, 0.05, mesh)

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss of a batch.
      params: the parameters ``w`` (replicated).
      batch: dict of ``[B, ...]`` arrays, ``B`` a multiple of the devices along ``axis_name``,
        ideally already split along ``axis_name`` of ``mesh`` (otherwise XLA moves it).
      rho: perturbation radius >= 0.
      mesh: the devices; device ``d`` perturbs with the examples ``[d B/D, (d+1) B/D)``.
      axis_name: the mesh axis the batch is split over.
      adaptive: ASAM perturbation (Kwon et al. 2021, arXiv:2102.11600) per device.
      eta: ASAM offset >= 0.
      renormalize: SSAM (Tan et al. 2024, arXiv:2401.07250) rescale per device.

    Returns:
      The device-averaged descent gradient, a pytree like ``params``.

    Raises:
      ValueError: when ``B`` does not divide over the devices, or for ``rho < 0`` or ``eta < 0``.
    """
    devices = mesh.shape[axis_name]
    batch_size = len(next(iter(batch.values())))
    if batch_size % devices:
        raise ValueError(f"The batch of {batch_size} examples does not divide over the {devices} devices.")
    sub_batches = split_into_sub_batches(batch, batch_size // devices)
    grad = jax.grad(loss_fn)
    shard_grads = device_vmap(grad, mesh, (None, 0), axis_name=axis_name)(params, sub_batches)
    descent_at = device_vmap(grad, mesh, (0, 0), axis_name=axis_name)
    tx = m_sharpness_sam(optax.identity(), rho, adaptive=adaptive, eta=eta, renormalize=renormalize)
    descent, _ = tx.update(
        shard_grads, tx.init(params), params, grad_fn=lambda stacked_params: descent_at(stacked_params, sub_batches)
    )
    return descent
