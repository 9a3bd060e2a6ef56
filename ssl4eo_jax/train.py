"""Self-supervised pre-training, then evaluation of the frozen encoder.

Read top to bottom: the state and the jitted step, then ``run``: mesh, input, model, state,
checkpoint, the shared training loop (``loop.TrainLoop``, which fine-tuning runs too), evaluation,
results.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ssl4eo_jax import augment, rng, sharding, short_run
from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.data import pipeline
from ssl4eo_jax.data.datasets import load_dataset_manifest
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.evaluators import BN_MODES, evaluate_frozen, frozen_encoder, recompute_bn
from ssl4eo_jax.loop import LoopSettings, TrainLoop
from ssl4eo_jax.methods import TrainLength, get_method
from ssl4eo_jax.methods.base import Method, encoder_variables, evaluated_encoder, evaluated_network, method_key
from ssl4eo_jax.models.resnet import ResNet
from ssl4eo_jax.monitor import TrainingMonitor
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.profiling import StepProfiler, profile_window
from ssl4eo_jax.report import MetricsLog, end_summary, summary_table, write_json
from ssl4eo_jax.tensorboard_events import EventLog, augmented_view_grid

State = dict[str, Any]


def init_variables(method: Method, config: Any, num_bands: int) -> tuple[dict[str, Any], Any]:
    """The method's initial variables and extra state (a pure function of config.seed: the
    ``init`` random stream)."""
    size = config.aug.crop_size
    return method.init(rng.stream(config.seed, "init"), jnp.zeros((2, size, size, num_bands), jnp.float32))


def init_state(method: Method, tx: optax.GradientTransformation, config: Any, num_bands: int,
               mesh: jax.sharding.Mesh) -> State:
    """The initial train state, created directly on the mesh: replicated, or with a ``model`` axis
    sharded over it (``sharding.state_shardings``)."""

    def init() -> State:
        variables, extra = init_variables(method, config, num_bands)
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": variables["params"],
            "batch_stats": variables["batch_stats"],
            "opt": tx.init(variables["params"]),
            "extra": extra,
        }

    return jax.jit(init, out_shardings=sharding.state_shardings(jax.eval_shape(init), mesh))()


def update_step(method: Method, tx: optax.GradientTransformation, lr_fn: Callable, state: State,
                views: list[jax.Array], seed: int) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step of ``method`` on given views (no augmentation): loss and gradients of
    the global batch (the loss gets the step's ``method`` key of ``seed``), the optimizer's update,
    then the method's ``after_update``. The step-equivalence tests run exactly this against the
    official PyTorch logic."""
    step = state["step"]
    key = method_key(seed, step)

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        return method.loss(params, state["batch_stats"], state["extra"], views, step, key)

    (loss, (batch_stats, extra, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    params, extra = method.after_update(params, extra, step)
    new_state = {"step": step + 1, "params": params, "batch_stats": batch_stats, "opt": opt, "extra": extra}
    return new_state, {"loss": loss, "lr": lr_fn(step), **aux}


def augment_key(config: Any) -> jax.Array:
    """The base key of the training augmentation (the ``augment`` stream); step ``s`` uses
    ``fold_in(augment_key, s)``."""
    return rng.stream(config.seed, "augment")


def make_train_step(method: Method, tx: optax.GradientTransformation, lr_fn: Callable, config: Any,
                    mean: np.ndarray, std: np.ndarray, mesh: jax.sharding.Mesh, state: State | None = None
                    ) -> Callable:
    """The jitted step: augment on device (physical values, normalised last), then ``update_step``
    on the views. The state keeps ``state``'s layout (``sharding.state_shardings``; without
    ``state``, replicated)."""
    aug_key = augment_key(config)
    mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)
    specs = augment.view_specs(config.aug)

    def train_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
        views = augment.make_views(jax.random.fold_in(aug_key, state["step"]), batch["image"], batch["index"],
                                   config.aug, mean_j, std_j, specs)
        return update_step(method, tx, lr_fn, state, views, config.seed)

    state_sharding = sharding.replicated(mesh) if state is None else sharding.state_shardings(state, mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
        out_shardings=(state_sharding, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def total_steps(config: Any, steps_per_epoch: float) -> int:
    if config.train.get("steps", 0) and config.train.steps > 0:
        return int(config.train.steps)
    return max(1, int(math.ceil(config.train.epochs * steps_per_epoch)))


@dataclasses.dataclass
class Inputs:
    """The dataset of a run and the numbers derived from it."""

    manifest: Any
    sources: dict[str, SplitSource]
    global_batch: int
    steps_per_epoch: float
    total_steps: int
    mean: np.ndarray
    std: np.ndarray


def load_inputs(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Inputs:
    """The manifest, its splits and the run's length; logs what will run."""
    global_batch = config.data.global_batch
    sharding.check_batch_size(global_batch, mesh)
    manifest = load_dataset_manifest(config.data)
    sources = {s: SplitSource(manifest, s) for s in ("train", "val", "test") if s in manifest.splits}
    if "train" not in sources:
        raise DatasetError(f"{manifest.root} has no train split; it has {sorted(manifest.splits)}.")
    spe = pipeline.steps_per_epoch(sources["train"], global_batch)
    n_steps = total_steps(config, spe)
    if len(sources["train"]) % global_batch:
        logging.info("The train split (%d) is not a multiple of the global batch (%d): batches run across "
                     "epoch boundaries and an epoch is %.2f steps.", len(sources["train"]), global_batch, spe)
    logging.info("Dataset %s at %s: %s; %d bands %s; %d classes", manifest.dataset, manifest.root,
                 {s: len(src) for s, src in sources.items()}, manifest.num_bands, manifest.shape, manifest.num_classes)
    logging.info("Pre-training %s for %d steps (%.1f epochs of %.1f steps) at global batch %d", config.method,
                 n_steps, n_steps / spe, spe, global_batch)
    mean, std = manifest.band_stats()
    return Inputs(manifest, sources, global_batch, spe, n_steps, mean, std)


def start_logs(config: ml_collections.ConfigDict, workdir: str, inputs: Inputs, start: int, derived: list[str],
               config_dict: dict[str, Any]) -> tuple[MetricsLog, EventLog]:
    """metrics.jsonl (per process when asked) and the TensorBoard events, with the run's config,
    short-run rules and the step-0 augmented views on a fresh run."""
    is_main = jax.process_index() == 0
    log_name = "metrics.jsonl" if is_main else f"metrics.process{jax.process_index()}.jsonl"
    metrics_log = MetricsLog(os.path.join(workdir, log_name), resume_step=start,
                             enabled=is_main or config.train.get("log_all_processes", False))
    events = EventLog(workdir, resume_step=start, enabled=is_main and config.train.get("tensorboard", True))
    if events.writer is not None and not start:
        events.config(config_dict)
        events.text("short_run_rules", "\n".join(f"- {line}" for line in derived) or "(none: a full-length run)")
        step0_key = jax.random.fold_in(augment_key(config), 0)
        events.image("augmented_views", augmented_view_grid(inputs.sources["train"], config.aug, step0_key,
                                                            inputs.mean, inputs.std))
    return metrics_log, events


def evaluate_encoders(config: ml_collections.ConfigDict, method: Method, monitor: TrainingMonitor,
                      frozen: Any, inputs: Inputs, state: State, n_steps: int, recompute: bool) -> dict[str, Any]:
    """The pre-trained encoder (last or best state) and the same encoder at its random
    initialisation, evaluated with one protocol (the same BN treatment, ``config.eval.bn``)."""
    init_vars, _ = jax.jit(lambda: init_variables(method, config, inputs.manifest.num_bands))()
    best = monitor.best_state(state) if config.eval.get("use_best", False) else None
    trained_vars = best[0] if best else state
    return {
        "evaluated_checkpoint": {"which": "best" if best else "last", "step": best[1] if best else n_steps},
        "eval_bn": BN_MODES[config.eval.get("bn", "recompute")] if isinstance(method.encoder, ResNet)
        else "none (the encoder has no BatchNorm)",
        "evaluated_network": evaluated_network(config.method),
        "pretrained": evaluate_frozen(frozen, evaluated_encoder(trained_vars, config.method), inputs.sources,
                                      config.eval, "pre-trained", recompute_bn=recompute),
        "random_init": evaluate_frozen(frozen, encoder_variables(init_vars), inputs.sources, config.eval,
                                       "random-init", recompute_bn=recompute),
    }


def write_results(config: ml_collections.ConfigDict, workdir: str, results: dict[str, Any], inputs: Inputs,
                  events: EventLog, profile_dir: str | None) -> None:
    """results.json, results.md, the TensorBoard summary and the printed end summary."""
    split = None
    if config.eval.enabled:
        split = "test" if "test" in inputs.sources else [s for s in inputs.sources if s != "train"][0]
        for encoder in ("pretrained", "random_init"):
            events.scalars(results["steps"], results[encoder], prefix=f"eval/{encoder}")
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "results.json"), results)
        if split:
            table = summary_table(results, split)
            with open(os.path.join(workdir, "results.md"), "w") as f:
                f.write(f"# {config.method} on {inputs.manifest.dataset} ({split} split)\n\n{table}\n")
            events.text("results", f"{split} split, frozen encoder:\n\n{table}", results["steps"])
        print("\n" + end_summary(results, workdir, split, profile_dir, events.writer is not None), flush=True)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains, evaluates and writes results into ``workdir``; returns the results dict."""
    began = time.time()
    mesh = sharding.config_mesh(config)
    logging.info("JAX %s on %d %s device(s), %d process(es); mesh %s", jax.__version__, jax.device_count(),
                 jax.devices()[0].platform, jax.process_count(), dict(mesh.shape))
    recompute = recompute_bn(config.eval)  # a bad config.eval.bn fails now, not after pre-training
    inputs = load_inputs(config, mesh)
    n_steps, spe = inputs.total_steps, inputs.steps_per_epoch
    profile = profile_window(config.train.get("profile_steps", ""), n_steps)
    derived = short_run.resolve(config, short_run.RunSize(len(inputs.sources["train"]), inputs.global_batch, n_steps))
    for line in derived:
        logging.info("Short-run rule: %s", line)
    config_dict = config.to_dict()
    os.makedirs(workdir, exist_ok=True)  # only now: a bad config or dataset leaves no trace
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "config.json"), config_dict)

    # Model, optimizer, state, step, data; resume when the work directory has a checkpoint.
    length = TrainLength(spe, n_steps)
    method = get_method(config, length, mesh)
    tx, lr_fn = make_optimizer(config.optim, spe, n_steps, method.param_groups())
    state = init_state(method, tx, config, inputs.manifest.num_bands, mesh)
    train_step = make_train_step(method, tx, lr_fn, config, inputs.mean, inputs.std, mesh, state)
    data_iter = pipeline.DeviceIterator(
        pipeline.train_dataset(inputs.sources["train"], inputs.global_batch, config.seed), mesh,
        workers=config.data.workers, threads=config.data.get("threads", 2))
    frozen = frozen_encoder(method.encoder, mesh, config.eval, inputs.mean, inputs.std)
    monitor = TrainingMonitor(config, workdir, frozen, inputs.sources, spe)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state, data_iter, config_dict)
        monitor.restore(ckpt.info(start), start)
        logging.info("Resumed from %s at step %d", ckpt.directory, start)
    metrics_log, events = start_logs(config, workdir, inputs, start, derived, config_dict)
    profiler = StepProfiler(profile, workdir, start)

    # The loop (loop.TrainLoop); the monitor watches for collapse and scores the kNN monitor.
    settings = LoopSettings(
        desc=f"pre-training {config.method}", total_steps=n_steps, global_batch=inputs.global_batch,
        steps_per_epoch=spe, log_every=config.train.log_every, checkpoint_every=config.train.checkpoint_every,
        transfer_guard=config.train.get("transfer_guard", "allow"), show_progress=jax.process_index() == 0,
        divergence_fix=f"Lower config.optim.base_lr (now {config.optim.base_lr}) or lengthen "
                       f"config.optim.warmup_epochs, and check the band statistics in "
                       f"{inputs.manifest.root}/manifest.json.")
    result = TrainLoop(settings, train_step, data_iter, ckpt, config_dict, metrics_log, hooks=monitor, events=events,
                       profiler=profiler).run(state, start)
    profiler.stop()
    ckpt.close()
    data_iter.close()
    if result.stopped:
        logging.warning("Stopped at step %d of %d: the embeddings collapsed.", result.steps, n_steps)

    results: dict[str, Any] = {
        "method": config.method, "dataset": inputs.manifest.dataset, "data_dir": inputs.manifest.root,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform, "processes": jax.process_count(),
        "global_batch": inputs.global_batch, "steps": result.steps, "epochs": result.steps / spe, "resumed_from": start,
        "final_metrics": result.last, "compile_seconds": result.compile_seconds,
        "train_images_per_sec": result.images_per_sec, "stopped_on_collapse": result.stopped,
        "short_run_rules": derived, **monitor.summary(),
    }
    if config.eval.enabled:
        results.update(evaluate_encoders(config, method, monitor, frozen, inputs, result.state, result.steps,
                                         recompute))
    monitor.close()
    results["wall_seconds"] = time.time() - began
    write_results(config, workdir, results, inputs, events, profiler.directory if profile else None)
    events.close()
    return results
