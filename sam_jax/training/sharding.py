"""Data parallelism over every device of every process: the mesh, batch shardings and host copies.

The state is replicated on every device; a training batch is split over the devices (its size must
divide over them), and each process loads only the rows its devices hold (docs/scaling.md).
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
    """The data-parallel mesh over every device of every process (``jax.distributed``)."""
    return Mesh(np.array(jax.devices()), ("data",))


def batch_sharding(mesh: Mesh, batch_size: int, *, train: bool = False) -> NamedSharding:
    """Splits the batch over the devices.

    A training batch must divide evenly over the devices (data parallelism); one that does not is
    an error rather than a silently replicated, device-count-times slower step. An evaluation batch
    that does not divide is replicated.

    Raises:
      ValueError: ``train`` and ``batch_size`` is not a multiple of the device count.
    """
    if batch_size % mesh.size == 0:
        return NamedSharding(mesh, PartitionSpec("data"))
    if train:
        raise ValueError(
            f"Bad config: batch_size={batch_size} does not divide over the {mesh.size} devices; "
            f"choose a multiple of {mesh.size} (for a full-batch optimizer the batch is the "
            "training set: change data.train_size), or run on fewer devices."
        )
    return replicated_sharding(mesh)


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A whole copy on every device of ``mesh`` (the train state, evaluation subsets)."""
    return NamedSharding(mesh, PartitionSpec())


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
    """The rows of a ``[batch_size, ...]`` array with ``sharding`` that this process's devices hold.

    In increasing order, as ``jax.make_array_from_process_local_data`` expects this process's part
    of a global array: all rows with one process or a replicated batch; with several processes and
    a batch split over the mesh, each process loads only its share (docs/scaling.md).
    """
    held = sharding.addressable_devices_indices_map((batch_size,)).values()
    return np.unique(np.concatenate([np.arange(batch_size)[index] for index in held]))


def to_host(array: jax.Array) -> np.ndarray:
    """The whole of a (possibly sharded across processes) array as NumPy, on every process.

    ``np.asarray`` of an array with rows on other processes' devices fails; the all-gather is a
    plain copy with one process.
    """
    return multihost_utils.process_allgather(array, tiled=True)


def replicate(mesh: Mesh, values: np.ndarray) -> jax.Array:
    """``values`` (the same on every process) replicated on every device of ``mesh``."""
    return jax.make_array_from_process_local_data(replicated_sharding(mesh), np.asarray(values))
