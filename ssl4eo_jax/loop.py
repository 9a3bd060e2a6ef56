"""The training loop that pre-training (``train.run``) and fine-tuning (``evaluators.finetune``) both
run: step, asynchronous metrics, the transfer guard, images/s, the NaN check, checkpoints and
progress, with its mutable state held in plain objects (``Throughput``, ``LoopResult``), not in
closures.

A task gives the loop a jitted ``step(state, batch) -> (state, metrics)`` (``metrics`` holds at
least ``loss`` and ``lr``), its data iterator, a ``Checkpointer`` and, optionally, ``LoopHooks``:
what to add at a log point (the evaluators of ``config.evals``, collapse detection) and whether a
log point must be read synchronously. A log record with ``"stop": True`` (collapse detection with
``stop_on_collapse``) ends the run at that step, after a checkpoint.

Metrics are copied to the host asynchronously and read one step late, so logging never stalls the
device; the transfer guard (``LoopSettings.transfer_guard``) can make any other host<->device copy
in the loop an error. A non-finite loss stops the run before that state is checkpointed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

import jax
import numpy as np

from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.errors import TrainingDiverged
from ssl4eo_jax.progress import progress
from ssl4eo_jax.report import MetricsLog

State = Any
Metrics = dict[str, jax.Array]


class LoopHooks:
    """What a task adds to the loop; these defaults add nothing (fine-tuning)."""

    def sync_due(self, done: int, last_step: int) -> bool:
        """Whether step ``done``'s log point needs its state now (an evaluation of it)."""
        return False

    def observe(self, done: int, values: dict[str, float], state: State, data_iter: Any, config: dict[str, Any],
                sync: bool) -> dict[str, Any]:
        """Handles one log point; returns what to add to its record."""
        return {}

    def describe(self, values: dict[str, float]) -> str:
        """Extra text for the log line."""
        return ""

    def checkpoint_info(self) -> dict[str, Any]:
        """The ``info`` item stored with each checkpoint."""
        return {}


@dataclasses.dataclass
class LoopSettings:
    """How long and how often: the task's numbers, in steps."""

    desc: str  # "pre-training barlow", "fine-tuning"
    total_steps: int
    global_batch: int
    steps_per_epoch: float
    log_every: int
    checkpoint_every: int
    divergence_fix: str  # what to change when the loss is not finite
    transfer_guard: str = "allow"
    show_progress: bool = True


@dataclasses.dataclass
class Throughput:
    """Training time and images/s between log points; evaluation time at a log point is excluded."""

    since_time: float
    since_step: int
    train_seconds: float = 0.0
    compile_seconds: float = 0.0

    def lap(self, done: int, batch: int) -> float | None:
        """Adds the time since the last mark to the training time; images/s over it (None for the
        first step, timed as compilation)."""
        now = time.time()
        self.train_seconds += now - self.since_time
        if done <= self.since_step:
            return None
        return (done - self.since_step) * batch / max(now - self.since_time, 1e-9)

    def mark(self, step: int) -> None:
        self.since_time, self.since_step = time.time(), step


@dataclasses.dataclass
class LoopResult:
    """The final state and what the loop measured."""

    state: State
    start: int
    batch: int
    steps: int  # the last step done (earlier than planned when a hook stopped the run)
    last: dict[str, Any] = dataclasses.field(default_factory=dict)  # the last log record
    first_loss: float | None = None
    compile_seconds: float = 0.0
    train_seconds: float = 0.0
    stopped: bool = False

    @property
    def images_per_sec(self) -> float | None:
        """The mean over the run after the first (compiling) step, or None for a run of one step."""
        trained = self.steps - self.start
        return None if trained <= 1 or self.train_seconds <= 0 else (trained - 1) * self.batch / self.train_seconds


class TrainLoop:
    """Runs ``step`` from ``start`` to ``settings.total_steps``; see the module docstring."""

    def __init__(self, settings: LoopSettings, step: Callable[[State, Any], tuple[State, Metrics]], data_iter: Any,
                 ckpt: Checkpointer, config: dict[str, Any], log: MetricsLog, hooks: LoopHooks | None = None,
                 events: Any = None, profiler: Any = None):
        self.settings, self.step, self.data_iter, self.ckpt = settings, step, data_iter, ckpt
        self.config, self.log, self.hooks = config, log, hooks or LoopHooks()
        self.events, self.profiler = events, profiler
        self.bar: Any = None
        self.stopping = False  # a log record asked to stop

    def run(self, state: State, start: int) -> LoopResult:
        s = self.settings
        clock = Throughput(time.time(), start)
        result = LoopResult(state, start, s.global_batch, start)
        self.bar = progress(total=s.total_steps, initial=start, desc=s.desc, unit="step", disable=not s.show_progress)
        pending: tuple[int, Metrics] | None = None
        with jax.transfer_guard(s.transfer_guard):
            for step in range(start, s.total_steps):
                batch = next(self.data_iter)
                if self.profiler is not None:
                    self.profiler.before(step)
                state, metrics = self.step(state, batch)
                if self.profiler is not None:
                    self.profiler.after(step + 1, metrics)
                done = step + 1
                if step == start:
                    self._first_step(metrics, clock, result, start)
                if pending is not None:  # the previous log point's metrics, read while this step runs
                    result.last, pending = self._flush(state, *pending, clock), None
                pending = self._log_point(state, done, metrics, clock, result, pending)
                if done % s.checkpoint_every == 0 or done == s.total_steps or self.stopping:
                    if pending is not None:  # never checkpoint a NaN state
                        result.last, pending = self._flush(state, *pending, clock), None
                    self._checkpoint(state, done, metrics, result)
                self.bar.update(1)
                result.steps = done
                if self.stopping:
                    result.stopped = True
                    break
            if pending is not None:
                result.last = self._flush(state, *pending, clock)
        self.bar.close()
        result.state, result.train_seconds, result.compile_seconds = state, clock.train_seconds, clock.compile_seconds
        return result

    def _first_step(self, metrics: Metrics, clock: Throughput, result: LoopResult, start: int) -> None:
        """Times the compilation apart from the throughput; keeps the first loss."""
        jax.block_until_ready(metrics)
        clock.compile_seconds = time.time() - clock.since_time
        logging.info("%s: compiled and ran the first step in %.1f s", self.settings.desc, clock.compile_seconds)
        with jax.transfer_guard("allow"):
            result.first_loss = float(metrics["loss"])
        clock.mark(start + 1)

    def _log_point(self, state: State, done: int, metrics: Metrics, clock: Throughput, result: LoopResult,
                   pending: tuple[int, Metrics] | None) -> tuple[int, Metrics] | None:
        """Reads a synchronous log point now, or starts the copy of an ordinary one."""
        s = self.settings
        if self.hooks.sync_due(done, s.total_steps):  # the hook scores this step's state
            result.last = self._flush(state, done, metrics, clock, sync=True)
            return None
        if done % s.log_every == 0 or done == s.total_steps:
            for value in metrics.values():
                value.copy_to_host_async()
            return done, metrics
        return pending

    def _flush(self, state: State, done: int, metrics: Metrics, clock: Throughput, sync: bool = False
               ) -> dict[str, Any]:
        """Writes one log point: metrics.jsonl, events, progress, the log line; checks the loss."""
        s = self.settings
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        ips = clock.lap(done, s.global_batch)
        record = {"step": done, "epoch": done / s.steps_per_epoch, **values, "images_per_sec": ips}
        with jax.transfer_guard("allow"):  # a hook's evaluation feeds the device on purpose
            record.update(self.hooks.observe(done, values, state, self.data_iter, self.config, sync))
        self.stopping = self.stopping or bool(record.get("stop"))
        self.log.write(record)
        if self.events is not None:
            self.events.scalars(done, record)
        speed = "compiling" if ips is None else f"{ips:.1f} images/s"
        self.bar.set_postfix(loss=f"{values['loss']:.4g}", img_s="-" if ips is None else f"{ips:.0f}")
        logging.info("%s: step %d/%d  loss %.5g  lr %.4g  %s%s", s.desc, done, s.total_steps, values["loss"],
                     values.get("lr", float("nan")), speed, self.hooks.describe(values))
        self._check_finite(done, values["loss"])
        clock.mark(done)  # a hook's evaluation time is not training time
        return record

    def _checkpoint(self, state: State, done: int, metrics: Metrics, result: LoopResult) -> None:
        if result.last.get("step") != done:  # not a log point: read the loss before saving
            with jax.transfer_guard("allow"):
                self._check_finite(done, float(metrics["loss"]))
        self.ckpt.save(done, state, self.data_iter, self.config, info=self.hooks.checkpoint_info())

    def _check_finite(self, done: int, loss: float) -> None:
        """A NaN/inf loss stops the run before its state is checkpointed; the last good checkpoint stays."""
        if np.isfinite(loss):
            return
        self.ckpt.wait()
        self.bar.close()
        raise TrainingDiverged(
            f"the {self.settings.desc} loss is {loss} at step {done}; that state is not checkpointed, the last good "
            f"checkpoint (step {self.ckpt.latest_step() or 0}) stays in {self.ckpt.directory}. "
            f"{self.settings.divergence_fix} The same command with the same work directory resumes from that "
            "checkpoint.")
