"""Orbax checkpoints of the train state, the data-iterator state and the config.

``<workdir>/checkpoints/<step>/`` holds three items: ``state`` (params, batch_stats, optimizer
state, method extras, step), ``data`` (one Grain iterator state file per process) and ``config``
(JSON), plus optionally ``info`` (JSON: the training monitor's state and scores). The best
checkpoint by the kNN monitor lives beside them in ``<workdir>/checkpoints_best/``, chosen by orbax's
best-checkpoint options on its score (``Checkpointer(best_metric=...)``). Every process calls save
and restore; the state restores into an abstract tree that
carries the shardings of the current mesh. Before restoring, the saved config is compared with the
current one so that a checkpoint of a different model or method fails with a readable message
instead of a shape error.
"""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from ssl4eo_jax.errors import UserError

# Settings that change the state's structure or the data stream: a checkpoint is only resumable
# when they match. (Epochs/steps may grow: resuming to train longer is allowed.) Pre-training also
# matches every key of its method's section.
COMPATIBILITY_KEYS = (
    "method", "model.name", "model.stem", "model.width", "data.global_batch", "data.name", "data.dir",
    "optim.name", "seed",
)
# A trained classifier (fine-tuning, the reference linear probe): the encoder it starts from, the
# data, its batch and optimizer, the labelled subset and the random streams.
CLASSIFIER_KEYS = (
    "task", "checkpoint", "normalisation", "encoder_bands", "seed", "model.name", "model.stem", "model.width",
    "data.name", "data.dir", "train.batch", "train.seed", "train.optim.name", "train.aug.crop_size",
    "eval.protocol", "eval.label_fraction", "eval.fraction_seed", "eval.fraction_with_replacement",
    "eval.pool", "train.layer_decay",
)
# The value of a key that a checkpoint's config lacks (written before the key existed).
KEY_DEFAULTS = {"train.layer_decay": 1.0}


def resume_keys(config: dict[str, Any]) -> list[str]:
    """The keys a checkpoint's config must share with ``config`` to be resumed by it."""
    if config.get("task", "pretrain") != "pretrain":
        return list(CLASSIFIER_KEYS)
    keys = list(COMPATIBILITY_KEYS)
    method = config.get("method")
    if method and isinstance(config.get(method), dict):
        keys += [f"{method}.{k}" for k in config[method]]
    return keys


class IncompatibleCheckpointError(UserError):
    """The checkpoint in the work directory was written with a different config."""


def _get(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def config_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two configs in the keys that must match."""
    out = []
    for key in resume_keys(current):
        a, b = _get(saved, key), _get(current, key)
        a, b = (KEY_DEFAULTS.get(key) if v is None else v for v in (a, b))
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a = list(a) if isinstance(a, (list, tuple)) else a
            b = list(b) if isinstance(b, (list, tuple)) else b
        if a != b:
            out.append(f"config.{key}: checkpoint has {a!r}, this run has {b!r}")
    return out


FAULT_ENV = "SSL4EO_JAX_KILL_DURING_CHECKPOINT"


def _injected_fault(step: int) -> None:
    """Fault injection for the tests: ``SSL4EO_JAX_KILL_DURING_CHECKPOINT=<step>`` kills the process
    with SIGKILL right after checkpoint ``step``'s asynchronous write has started."""
    if os.environ.get(FAULT_ENV) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


class Checkpointer:
    """Saves and restores (state, data iterator, config) under ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True, subdir: str = "checkpoints",
                 best_metric: str | None = None):
        """``best_metric``: keep the ``keep`` checkpoints with the highest value of this metric (given
        to ``save``), by orbax's own best-checkpoint options, instead of the latest ones."""
        self.directory = os.path.abspath(os.path.join(workdir, subdir))
        best = {} if best_metric is None else {
            "best_fn": lambda metrics: float(metrics[best_metric]), "best_mode": "max",
            "keep_checkpoints_without_metrics": False}
        self.manager = ocp.CheckpointManager(
            self.directory,
            # A write cut short (SIGKILL, power loss) leaves only a temporary folder, removed here.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
                # Orbax names its cross-process barriers after the step; two managers of one run
                # (the checkpoints and the best one) saving the same step would share them, and one
                # process could pass a barrier before the other wrote its part. Prefix with the folder.
                multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=subdir),
                **best,
            ),
            item_names=("state", "data", "config", "info"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best checkpoint by ``best_metric`` (the latest without one)."""
        return self.manager.best_step()

    def steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def drop_after(self, step: int) -> None:
        """Deletes the checkpoints newer than ``step`` (a run resumed from ``step`` writes them again)."""
        for later in [s for s in self.manager.all_steps() if s > step]:
            self.manager.delete(later)

    def save(self, step: int, state: Any, data_iter: Any, config: dict[str, Any],
             info: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> None:
        # The topology is saved with the config: each process's data-iterator state belongs to its
        # shard of the stream, so a run resumes on the same number of processes.
        self._check_free_space(step, state)
        config = {**config, "_runtime": {"process_count": jax.process_count()}}
        items = {"info": ocp.args.JsonSave(info)} if info is not None else {}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iter),
                config=ocp.args.JsonSave(config),
                **items,
            ),
            metrics=metrics,
        )
        _injected_fault(step)

    def _check_free_space(self, step: int, state: Any) -> None:
        """Refuses, before anything is written, a checkpoint that cannot fit on the disk (orbax would
        fail half-way in a background thread); the last complete checkpoint stays."""
        needed = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, "dtype"))
        free = shutil.disk_usage(self.directory).free
        if free < needed * 1.1 + (1 << 20):
            raise UserError(
                f"no space left on the device for checkpoint {step}: it needs about {needed / 2**20:.1f} MiB in "
                f"{self.directory}, {free / 2**20:.1f} MiB are free. Free some space or choose a work dir on "
                f"another disk (--workdir); the last complete checkpoint (step {self.latest_step() or 0}) is "
                "kept and the same command resumes from it."
            )

    def info(self, step: int) -> dict[str, Any]:
        """The ``info`` item saved with checkpoint ``step`` ({} when it has none)."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(info=ocp.args.JsonRestore()))
        except KeyError:
            return {}
        return dict(restored["info"] or {})

    def saved_config(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored["config"])

    def restore(self, step: int, state_like: Any, data_iter: Any, config: dict[str, Any]) -> Any:
        """Restores the state (with ``state_like``'s shapes and shardings) and the iterator."""
        saved = self.saved_config(step)
        problems = config_mismatches(saved, config)
        saved_processes = saved.get("_runtime", {}).get("process_count", jax.process_count())
        if saved_processes != jax.process_count():
            problems.append(f"processes: checkpoint was written by {saved_processes}, this run has "
                            f"{jax.process_count()} (resume on the same topology)")
        if problems:
            raise IncompatibleCheckpointError(
                f"The checkpoint at {self.directory}/{step} comes from an incompatible config:\n  "
                + "\n  ".join(problems)
                + "\nUse a new --workdir for this config, or run with the checkpoint's settings to resume it."
            )
        return self._restore(step, state_like, data=grain.checkpoint.CheckpointRestore(data_iter))

    def restore_state(self, step: int, state_like: Any) -> Any:
        """Only the train state of checkpoint ``step`` (e.g. the best one, for evaluation)."""
        return self._restore(step, state_like)

    def _restore(self, step: int, state_like: Any, **items: Any) -> Any:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_like
        )
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), **items)
            )
        except (ValueError, KeyError, TypeError) as e:
            raise IncompatibleCheckpointError(
                f"The checkpoint at {self.directory}/{step} does not fit this run's state ({e}). "
                "Use a new --workdir, or the checkpoint's config."
            ) from e
        return restored["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
