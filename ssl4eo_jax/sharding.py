"""The device mesh and the shardings of state and batches (data parallelism over all devices).

The mesh is 1-D with axis ``data``. Batches are sharded along their first axis, the train state is
replicated. Host batches become global ``jax.Array``s with
``jax.make_array_from_process_local_data``, which works on one host and across many.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ssl4eo_jax.errors import ConfigError

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, what: str = "config.data.global_batch") -> None:
    """The global batch must split evenly over devices and processes."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        lower = max(n_dev, global_batch - global_batch % n_dev)
        raise ConfigError(
            f"{what}={global_batch} is not divisible by the {n_dev} devices of the mesh; "
            f"use a multiple of {n_dev}, e.g. --{what}={lower} or "
            f"{lower + n_dev}."
        )
    if global_batch % jax.process_count():
        raise ConfigError(f"{what}={global_batch} is not divisible by the {jax.process_count()} processes.")


def local_batch_size(global_batch: int) -> int:
    return global_batch // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's part of a batch into global arrays sharded along ``data``."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device of the mesh (same values on every process)."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as a full numpy array on every process."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
