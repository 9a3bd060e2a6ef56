"""Wall-clock timing of jitted work and of host loops."""

from __future__ import annotations

import platform
import time
from typing import Any, Callable

import jax


def time_jitted(fn: Callable[..., Any], *args: Any, iters: int = 10, warmup: int = 2) -> float:
    """Median seconds per call of a jitted function (after warm-up/compilation)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "host_cpus": _cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }


def _cpu_count() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
