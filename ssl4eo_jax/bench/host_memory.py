"""``bench --what=memory``: the largest global batch whose train step fits in this host's memory.

On a CPU, XLA's buffers live in host memory and the device reports no limit, so the bound is the
machine's RAM. XLA's memory analysis of the compiled step (arguments + outputs + temporaries -
aliased donations) is linear in the batch; it is read at two batches (nothing runs), the line is
solved for the batch that fills ``FILL`` (90 %) of the RAM left beside this process's resident
memory, rounded down to a multiple of ``MULTIPLE``, and the step is compiled once more at that
batch to confirm the bytes (stepping down while it does not fit, up while the next multiple fits).
"""

from __future__ import annotations

import os
from typing import Any, Callable

FILL = 0.9
MULTIPLE = 64


def host_memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> int:
    """This process's current resident set size (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


def step_budget_bytes(host_ram: int | None = None) -> int:
    """What a CPU step may use: ``FILL`` of the host's RAM (``host_ram``, else measured) beside this
    process's resident memory."""
    return int(FILL * (host_ram or host_memory_bytes())) - resident_bytes()


def compiled_bytes(compiled: Any) -> int:
    """Bytes XLA allocates for one call of a compiled computation (donated inputs counted once)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def largest_batch(bytes_at: Callable[[int], int], budget: int, probes: tuple[int, int] = (128, 256),
                  multiple: int = MULTIPLE) -> dict[str, Any]:
    """The largest multiple of ``multiple`` whose ``bytes_at(batch)`` is at most ``budget``: solved
    from the line through two probe batches, then confirmed: stepped down until it fits, or up
    while the next multiple fits too."""
    (b0, b1) = probes
    m0, m1 = bytes_at(b0), bytes_at(b1)
    per_image = (m1 - m0) / (b1 - b0)
    fixed = m0 - per_image * b0
    if per_image <= 0:
        raise ValueError(f"XLA's memory for batches {b0} and {b1} does not grow ({m0} -> {m1} bytes).")
    batch = max(multiple, int((budget - fixed) / per_image) // multiple * multiple)
    confirmed = bytes_at(batch)
    while confirmed > budget and batch > multiple:
        batch -= multiple
        confirmed = bytes_at(batch)
    following = bytes_at(batch + multiple) if confirmed <= budget else None
    while following is not None and following <= budget:  # the line can be pessimistic past the probes
        batch, confirmed = batch + multiple, following
        following = bytes_at(batch + multiple)
    return {"batch": batch, "bytes": confirmed, "fits": confirmed <= budget, "fixed_bytes": fixed,
            "bytes_per_image": per_image, "budget_bytes": budget, "next_bytes": following}
