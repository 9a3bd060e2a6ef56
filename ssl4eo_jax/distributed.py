"""Multi-host start-up: ``jax.distributed`` from SLURM, TPU pod metadata or explicit settings.

``config.distributed`` is one of:

* ``none`` (default): one process, every local device;
* ``auto``: let JAX detect the cluster (SLURM, Cloud TPU pods, Open MPI, Kubernetes);
* ``slurm`` / ``tpu``: force that detection (e.g. under ``srun``, or on every host of a TPU pod);
* ``explicit``: ``config.cluster.coordinator`` (host:port of process 0), ``num_processes`` and
  ``process_id``, or the environment variables ``SSL4EO_COORDINATOR``, ``SSL4EO_NUM_PROCESSES``,
  ``SSL4EO_PROCESS_ID``.

Every process then runs the same program: each reads only its shard of the data, all of them take
part in every jitted step and in checkpointing, and process 0 writes the logs and results. On CPU the
processes talk through Gloo collectives.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

from ssl4eo_jax.errors import ConfigError

MODES = ("none", "auto", "slurm", "tpu", "explicit")


def _explicit_settings(cluster: Any) -> dict[str, Any]:
    coordinator = (cluster.get("coordinator") if cluster else "") or os.environ.get("SSL4EO_COORDINATOR", "")
    num = (cluster.get("num_processes") if cluster else 0) or int(os.environ.get("SSL4EO_NUM_PROCESSES", "0"))
    pid = cluster.get("process_id", -1) if cluster else -1
    if pid is None or pid < 0:
        pid = int(os.environ.get("SSL4EO_PROCESS_ID", "-1"))
    missing = [name for name, ok in (("coordinator", bool(coordinator)), ("num_processes", num > 0),
                                     ("process_id", 0 <= pid < max(num, 1))) if not ok]
    if missing:
        raise ConfigError(
            "config.distributed='explicit' needs " + ", ".join(f"config.cluster.{m}" for m in missing)
            + " (or SSL4EO_COORDINATOR / SSL4EO_NUM_PROCESSES / SSL4EO_PROCESS_ID); e.g. "
            "--config.cluster.coordinator=host0:1234 --config.cluster.num_processes=2 --config.cluster.process_id=0."
        )
    return {"coordinator_address": coordinator, "num_processes": num, "process_id": pid}


def initialize(config: Any) -> None:
    """Starts ``jax.distributed`` as ``config.distributed`` asks; a no-op for ``none``."""
    mode = config.get("distributed", "none") or "none"
    if mode not in MODES:
        raise ConfigError(f"Unknown config.distributed={mode!r}; choose one of {', '.join(MODES)}.")
    if mode == "none":
        return
    if mode == "explicit":
        kwargs = _explicit_settings(config.get("cluster"))
    elif mode in ("slurm", "tpu"):
        kwargs = {"cluster_detection_method": mode}
    else:
        kwargs = {}
    # How long a silent peer may stay silent before the others abort (jax's default is 100 s).
    cluster = config.get("cluster") or {}
    kwargs["heartbeat_timeout_seconds"] = int(cluster.get("heartbeat_seconds", 100))
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
