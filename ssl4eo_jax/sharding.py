"""The device mesh and the shardings of state and batches (data parallelism over all devices).

By default the mesh is 1-D with axis ``data``: batches are sharded along their first axis, the train
state is replicated. With ``config.mesh.model = M > 1`` the mesh is 2-D, ``(data, model)`` of shape
``(devices / M, M)``, for models that do not fit one device (FSDP / ZeRO-3): the batch is still sharded
over every device (``P(("data", "model"))``), and each parameter and its optimizer state is sharded
over ``model`` along its largest dimension that ``M`` divides (``state_shardings``; replicated when
none does); XLA inserts the all-gathers of the parameters and the reduce-scatters of the gradients.
Host batches become global ``jax.Array``s with ``jax.make_array_from_process_local_data``, which
works on one host and across many.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4eo_jax.errors import ConfigError

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(devices: Sequence[jax.Device] | None = None, model: int = 1) -> Mesh:
    """The mesh over ``devices`` (default: every device of every process): 1-D ``data`` when
    ``model`` is 1, else 2-D ``(data, model)`` with ``model`` devices along ``model``."""
    devices = list(jax.devices() if devices is None else devices)
    model = int(model)
    if model < 1 or len(devices) % model:
        raise ConfigError(f"config.mesh.model={model} does not divide the {len(devices)} devices; use a divisor "
                          f"of {len(devices)} (1: replicated parameters).")
    if model == 1:
        return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))
    grid = np.asarray(devices).reshape(len(devices) // model, model)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS), axis_types=(AxisType.Auto, AxisType.Auto))


def config_mesh(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The mesh of ``config.mesh.model`` (1 where the config has no ``mesh`` section)."""
    mesh_cfg = config.get("mesh") or {}
    return make_mesh(devices, model=mesh_cfg.get("model", 1))


def model_size(mesh: Mesh) -> int:
    """The number of devices along ``model`` (1 on a 1-D mesh)."""
    return int(mesh.shape.get(MODEL_AXIS, 1))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The first axis over every device of the mesh (``data``, or ``data`` x ``model``)."""
    if MODEL_AXIS in mesh.axis_names:
        return NamedSharding(mesh, P((DATA_AXIS, MODEL_AXIS)))
    return NamedSharding(mesh, P(DATA_AXIS))


def param_spec(shape: Sequence[int], model: int) -> P:
    """``model`` along the largest dimension that ``model`` divides (the first of equals); ``P()``
    (replicated) for scalars, when no dimension is divisible, or when ``model`` is 1."""
    candidates = [(size, -axis) for axis, size in enumerate(shape) if model > 1 and size >= model and size % model == 0]
    if not candidates:
        return P()
    axis = -max(candidates)[1]
    return P(*([None] * axis + [MODEL_AXIS]))


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """A ``NamedSharding`` per leaf of ``state`` (arrays or ``jax.ShapeDtypeStruct``s): replicated on a
    mesh without a ``model`` axis, else each leaf sharded over ``model`` by ``param_spec`` (FSDP)."""
    model = model_size(mesh)
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), model)), state)


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
    """Places a host pytree on every device of the mesh (same values on every process); a device
    array sharded over ``model`` is gathered on the devices (it may span processes)."""
    sharding = replicated(mesh)

    def put(x: Any) -> jax.Array:
        if isinstance(x, jax.Array) and not x.sharding.is_fully_replicated:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def to_host(x: jax.Array) -> np.ndarray:
    """A global array as a full numpy array on every process."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
