"""Progress that reads well on a terminal and in a log file.

``progress(...)`` is a tqdm bar when stderr is a terminal. When it is not (``... > log 2>&1``, a
SLURM job's output), a bar's carriage returns would interleave with the log lines, so it prints
plain lines instead: one every ``SSL4EO_JAX_PROGRESS_SECONDS`` (default 60) and one at the end,
e.g. ``pre-training barlow: 120/219 step (55 %), 1.9 step/s, 52 s left, loss=0.81``.
``SSL4EO_JAX_PROGRESS=bars`` or ``=lines`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, Union

from tqdm import tqdm


def use_bars() -> bool:
    """Progress bars on a terminal, plain lines elsewhere (or as ``SSL4EO_JAX_PROGRESS`` says)."""
    choice = os.environ.get("SSL4EO_JAX_PROGRESS", "").lower()
    if choice in ("bars", "lines"):
        return choice == "bars"
    return sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True, unit_scale: bool = False) -> Any:
    """A tqdm bar on a terminal, else a ``LineProgress`` with the same methods."""
    if disable or use_bars():
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    unit_scale=unit_scale)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)


class LineProgress:
    """tqdm's ``update``/``set_postfix``/``close``/iteration, reported as plain lines on stderr."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, interval: float | None = None, clock=time.monotonic):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.n, self._start_n = desc, unit, initial, initial
        self.interval = float(os.environ.get("SSL4EO_JAX_PROGRESS_SECONDS", 60)) if interval is None else interval
        self._clock = clock
        self._began = self._last = clock()
        self._postfix = ""
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._print(self._clock(), done=True)

    def line(self, now: float, done: bool = False) -> str:
        """The progress line: count, percentage, rate, time left (or taken) and the postfix."""
        elapsed = max(now - self._began, 1e-9)
        rate = (self.n - self._start_n) / elapsed
        scale, unit = (2**20, "MiB") if self.unit == "B" else (1, self.unit)
        n, total = self.n / scale, (self.total or 0) / scale
        count = f"{n:.4g}/{total:.4g} {unit} ({100 * self.n / self.total:.0f} %)" if self.total else f"{n:.4g} {unit}"
        parts = [f"{self.desc}: {count}", f"{rate / scale:.3g} {unit}/s"]
        if done:
            parts.append(f"{elapsed:.0f} s in all")
        elif self.total and rate > 0:
            parts.append(f"{(self.total - self.n) / rate:.0f} s left")
        if self._postfix:
            parts.append(self._postfix)
        return ", ".join(parts)

    def _print(self, now: float, done: bool = False) -> None:
        print(self.line(now, done), file=sys.stderr, flush=True)


ProgressBar = Union[tqdm, LineProgress]
