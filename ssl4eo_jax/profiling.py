"""``config.train.profile_steps="<first>,<last>"``: a ``jax.profiler`` trace of those training steps.

Steps count from 1 as the log lines do. The trace goes to ``<workdir>/profile/plugins/profile/<time>/``
(``*.xplane.pb``), which TensorBoard's profile plugin (``pip install tensorboard-plugin-profile``,
then ``tensorboard --logdir <workdir>/profile``) and https://ui.perfetto.dev open. Profile a few
steps after the first, which includes the compilation: e.g. ``--config.train.profile_steps=10,12``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax

from ssl4eo_jax.errors import ConfigError


def profile_window(value: Any, n_steps: int) -> tuple[int, int] | None:
    """Parses ``config.train.profile_steps`` ("" for none) into (first, last), both in 1..n_steps."""
    if value in (None, "", ()):
        return None
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        first, last = 0, -1
    if not 1 <= first <= last <= n_steps:
        raise ConfigError(f"config.train.profile_steps={value!r}: give '<first>,<last>' with 1 <= first <= last <= "
                          f"{n_steps} (this run's steps), e.g. --config.train.profile_steps=10,12.")
    return first, last


class StepProfiler:
    """Starts the trace before step ``first`` and stops it once step ``last`` has finished."""

    def __init__(self, window: tuple[int, int] | None, workdir: str, start: int):
        # Resumed inside the window: trace what is left of it; past it: nothing.
        self.window = (max(window[0], start + 1), window[1]) if window and window[1] > start else None
        self.directory = os.path.join(workdir, "profile")
        self.active = False

    def before(self, step: int) -> None:
        """Called before the step that will be step ``step + 1`` in the log."""
        if self.window and not self.active and step + 1 == self.window[0]:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, done: int, outputs: Any) -> None:
        """Called after step ``done`` was dispatched; waits for it before closing the trace."""
        if self.active and done >= self.window[1]:
            jax.block_until_ready(outputs)
            self.stop()
            logging.info("Profile of steps %d-%d in %s (open it in TensorBoard's profile plugin or Perfetto).",
                         self.window[0], self.window[1], self.directory)

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
