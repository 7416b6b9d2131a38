"""Several processes, one run: joining JAX's distributed runtime from the ``distributed`` config block.

One process per host (or per GPU, as a cluster launcher prefers) runs the same command; after
``jax.distributed.initialize`` every process sees the devices of all of them in ``jax.devices()``,
jitted computations run on all of them, and the loop's data-parallel mesh spans the cluster
(docs/scaling.md has the launch commands).

The block has three modes:

- off (the default: ``auto=False``, ``coordinator_address=""``): one process, nothing is called;
- explicit (``coordinator_address="host:port"`` with ``num_processes`` and ``process_id``): for
  launchers JAX cannot detect, and for processes started by hand (the tests, one machine);
- auto (``auto=True``): ``jax.distributed.initialize()`` reads the cluster's environment (SLURM,
  Open MPI, Cloud TPU pods); any explicit field that is set overrides what it detects.

Initialization must come before anything creates the XLA backend (``jax.devices()``, a
``device_put``, any computation): the backend's device list is built from the topology that the
processes exchange through the coordinator, and JAX raises ``RuntimeError`` when it is too late.
The command-line drivers therefore call :func:`initialize_distributed` before the run itself
(``experiments/cli.py``).
"""

from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils


def default_distributed_config() -> ml_collections.ConfigDict:
    """The ``distributed`` block of a run config: off.

    Fields:
      auto: detect the cluster from its environment (SLURM, Open MPI, TPU pod).
      coordinator_address: ``"host:port"`` of process 0's coordinator; "" = not given.
      num_processes: processes in the run; 0 = not given.
      process_id: this process's index in ``0 .. num_processes - 1``; -1 = not given.
      local_device_ids: comma-separated ids of the local devices this process uses (e.g. ``"0,1"``);
        "" = JAX's default (all local devices, or one GPU per process under SLURM / Open MPI).
    """
    config = ml_collections.ConfigDict()
    config.auto = False
    config.coordinator_address = ""
    config.num_processes = 0
    config.process_id = -1
    config.local_device_ids = ""
    return config


def _device_ids(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def validate_distributed_config(config: ml_collections.ConfigDict) -> None:
    """Raises one ``ValueError`` naming the bad field of a ``distributed`` block.

    Args:
      config: a block shaped like :func:`default_distributed_config`.
    """
    unknown = set(config.keys()) - set(default_distributed_config().keys())
    if unknown:
        raise ValueError(
            f"unknown distributed fields {sorted(unknown)}; the fields are "
            f"{sorted(default_distributed_config().keys())}."
        )
    if not isinstance(config.auto, bool):
        raise ValueError(f"distributed.auto={config.auto!r} must be True or False.")
    try:
        ids = _device_ids(config.local_device_ids)
    except ValueError as err:
        raise ValueError(
            f"distributed.local_device_ids={config.local_device_ids!r} must be comma-separated integers, e.g. '0,1'."
        ) from err
    if any(i < 0 for i in ids):
        raise ValueError(f"distributed.local_device_ids={config.local_device_ids!r} must be >= 0.")
    if config.num_processes < 0:
        raise ValueError(f"distributed.num_processes={config.num_processes} must be >= 1 (0 = not given).")
    if config.process_id < -1 or (config.num_processes and config.process_id >= config.num_processes):
        raise ValueError(f"distributed.process_id={config.process_id} must be in 0..num_processes-1 (-1 = not given).")
    if config.auto:
        return
    given = {
        name: config[name]
        for name, unset in (("num_processes", 0), ("process_id", -1), ("local_device_ids", ""))
        if config[name] != unset
    }
    if not config.coordinator_address:
        if given:
            raise ValueError(
                f"distributed.{sorted(given)[0]} is set but distributed is off; set "
                "distributed.coordinator_address (with num_processes and process_id), or "
                "distributed.auto=True to detect the rest from the cluster."
            )
        return
    if config.num_processes < 1 or config.process_id < 0:
        raise ValueError(
            f"distributed.coordinator_address={config.coordinator_address!r} needs "
            "distributed.num_processes >= 1 and distributed.process_id in 0..num_processes-1 "
            "(or distributed.auto=True to detect them from the cluster)."
        )


def initialize_distributed(config: ml_collections.ConfigDict) -> bool:
    """Joins the multi-process run that ``config`` (the ``distributed`` block) describes.

    Call it first thing in a process: before any JAX computation or device query (see the module
    docstring). Every process of the run must call it with the same ``coordinator_address`` and
    ``num_processes``. Cross-process collectives on CPU use gloo (JAX's default).

    Args:
      config: the ``distributed`` block of a run config (:func:`default_distributed_config`).

    Returns:
      True when this process joined a distributed run (also when JAX was already initialized
      by the caller); False when the block is off.

    Raises:
      ValueError: a bad block, or ``auto=True`` where JAX detects no cluster.
    """
    validate_distributed_config(config)
    if not (config.auto or config.coordinator_address):  # off
        return False
    if jax.distributed.is_initialized():
        return True
    explicit: dict[str, Any] = {
        "coordinator_address": config.coordinator_address or None,
        "num_processes": config.num_processes or None,
        "process_id": config.process_id if config.process_id >= 0 else None,
        "local_device_ids": _device_ids(config.local_device_ids) or None,
    }
    try:
        jax.distributed.initialize(**explicit)
    except ValueError as err:
        if not config.auto:
            raise
        raise ValueError(  # auto mode outside a cluster that JAX knows
            f"distributed.auto=True, but JAX could not detect the cluster ({err}); launch under "
            "SLURM, Open MPI or a TPU pod, or set distributed.coordinator_address, "
            "num_processes and process_id."
        ) from err
    return True


def sync_processes(name: str) -> None:
    """Waits until every process of a distributed run reaches the barrier ``name``; no-op for one."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def is_primary_process() -> bool:
    """Whether this process writes the run's files (process 0; the only one without distribution)."""
    return jax.process_index() == 0
