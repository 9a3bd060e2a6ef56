"""Self-supervised pre-training, then evaluation of the frozen encoder, in one readable loop.

Read top to bottom: logging, mesh, input, model, state, step, checkpoint, loop, evaluation.
"""

from __future__ import annotations

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
from ssl4eo_jax.progress import progress

from ssl4eo_jax import augment, sharding, short_run
from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.data import pipeline
from ssl4eo_jax.data.datasets import load_dataset_manifest
from ssl4eo_jax.data.manifest import DatasetError
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import TrainingDiverged
from ssl4eo_jax.evaluators import BN_MODES, evaluate_frozen, frozen_encoder, recompute_bn
from ssl4eo_jax.methods import TrainLength, get_method
from ssl4eo_jax.methods.base import Method, encoder_variables, evaluated_encoder, evaluated_network
from ssl4eo_jax.monitor import TrainingMonitor
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.profiling import StepProfiler, profile_window
from ssl4eo_jax.report import MetricsLog, end_summary, summary_table, write_json
from ssl4eo_jax.tensorboard_events import EventLog, augmented_view_grid

State = dict[str, Any]
INIT_KEY, AUGMENT_KEY = 0, 1


def init_variables(method: Method, config: Any, num_bands: int) -> tuple[dict[str, Any], Any]:
    """The method's initial variables and extra state (a pure function of config.seed)."""
    key = jax.random.fold_in(jax.random.key(config.seed), INIT_KEY)
    size = config.aug.crop_size
    return method.init(key, jnp.zeros((2, size, size, num_bands), jnp.float32))


def init_state(method: Method, tx: optax.GradientTransformation, config: Any, num_bands: int,
               mesh: jax.sharding.Mesh) -> State:
    """The initial train state, created directly as replicated arrays on the mesh."""

    def init() -> State:
        variables, extra = init_variables(method, config, num_bands)
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": variables["params"],
            "batch_stats": variables["batch_stats"],
            "opt": tx.init(variables["params"]),
            "extra": extra,
        }

    return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def update_step(method: Method, tx: optax.GradientTransformation, lr_fn: Callable, state: State,
                views: list[jax.Array]) -> tuple[State, dict[str, jax.Array]]:
    """One optimizer step of ``method`` on given views (no augmentation): loss and gradients of
    the global batch, the optimizer's update, then the method's ``after_update``. The
    step-equivalence tests run exactly this against the official PyTorch logic."""
    step = state["step"]

    def loss_fn(params: Any) -> tuple[jax.Array, Any]:
        return method.loss(params, state["batch_stats"], state["extra"], views, step)

    (loss, (batch_stats, extra, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    params, extra = method.after_update(params, extra, step)
    new_state = {"step": step + 1, "params": params, "batch_stats": batch_stats, "opt": opt, "extra": extra}
    return new_state, {"loss": loss, "lr": lr_fn(step), **aux}


def augment_key(config: Any) -> jax.Array:
    """The base key of the training augmentation; step ``s`` uses ``fold_in(augment_key, s)``."""
    return jax.random.fold_in(jax.random.key(config.seed), AUGMENT_KEY)


def make_train_step(method: Method, tx: optax.GradientTransformation, lr_fn: Callable, config: Any,
                    mean: np.ndarray, std: np.ndarray, mesh: jax.sharding.Mesh) -> Callable:
    """The jitted step: augment on device, then ``update_step`` on the views."""
    aug_key = augment_key(config)
    mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)
    specs = augment.view_specs(config.aug)

    def train_step(state: State, batch: dict[str, jax.Array]) -> tuple[State, dict[str, jax.Array]]:
        images = augment.normalize(batch["image"], mean_j, std_j)
        views = augment.make_views(jax.random.fold_in(aug_key, state["step"]), images, batch["index"], config.aug,
                                   mean_j, std_j, specs)
        return update_step(method, tx, lr_fn, state, views)

    state_sharding = sharding.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, sharding.batch_sharded(mesh)),
        out_shardings=(state_sharding, state_sharding),
        donate_argnums=(0,),
    )


def total_steps(config: Any, steps_per_epoch: float) -> int:
    if config.train.get("steps", 0) and config.train.steps > 0:
        return int(config.train.steps)
    return max(1, int(math.ceil(config.train.epochs * steps_per_epoch)))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Pre-trains, evaluates and writes results into ``workdir``; returns the results dict."""
    began = time.time()
    is_main = jax.process_index() == 0

    # Mesh.
    mesh = sharding.make_mesh()
    logging.info("JAX %s on %d %s device(s), %d process(es)", jax.__version__, jax.device_count(),
                 jax.devices()[0].platform, jax.process_count())
    global_batch = config.data.global_batch
    sharding.check_batch_size(global_batch, mesh)
    recompute = recompute_bn(config.eval)  # a bad config.eval.bn fails now, not after pre-training

    # Input.
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
    profile = profile_window(config.train.get("profile_steps", ""), n_steps)
    derived = short_run.resolve(config, short_run.RunSize(len(sources["train"]), global_batch, n_steps))
    for line in derived:
        logging.info("Short-run rule: %s", line)
    config_dict = config.to_dict()
    os.makedirs(workdir, exist_ok=True)  # only now: a bad config or dataset leaves no trace
    if is_main:
        write_json(os.path.join(workdir, "config.json"), config_dict)

    # Model, optimizer, state, step.
    length = TrainLength(spe, n_steps)
    method = get_method(config, length, mesh)
    tx, lr_fn = make_optimizer(config.optim, spe, n_steps, method.param_groups())
    state = init_state(method, tx, config, manifest.num_bands, mesh)
    train_step = make_train_step(method, tx, lr_fn, config, mean, std, mesh)
    data_iter = pipeline.DeviceIterator(
        pipeline.train_dataset(sources["train"], global_batch, config.seed), mesh, workers=config.data.workers,
        threads=config.data.get("threads", 2),
    )

    # Checkpoint: resume when the work directory has one. The monitor watches for collapse.
    frozen = frozen_encoder(method.encoder, mesh, config.eval, mean, std)
    monitor = TrainingMonitor(config, workdir, frozen, sources, length.steps_per_epoch)
    ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state, data_iter, config_dict)
        monitor.restore(ckpt.info(start), start)
        logging.info("Resumed from %s at step %d", ckpt.directory, start)
    log_name = "metrics.jsonl" if is_main else f"metrics.process{jax.process_index()}.jsonl"
    metrics_log = MetricsLog(os.path.join(workdir, log_name), resume_step=start,
                             enabled=is_main or config.train.get("log_all_processes", False))
    events = EventLog(workdir, resume_step=start, enabled=is_main and config.train.get("tensorboard", True))
    if events.writer is not None and not start:
        events.config(config_dict)
        events.text("short_run_rules", "\n".join(f"- {line}" for line in derived) or "(none: a full-length run)")
        step0_key = jax.random.fold_in(augment_key(config), 0)
        events.image("augmented_views", augmented_view_grid(sources["train"], config.aug, step0_key, mean, std))
    profiler = StepProfiler(profile, workdir, start)

    # Loop. Metrics are copied to the host asynchronously and read one step late, so logging never
    # stalls the device; the transfer guard (config.train.transfer_guard) can make any other
    # host<->device copy in the loop an error.
    log_every, ckpt_every = config.train.log_every, config.train.checkpoint_every
    compile_seconds, train_seconds, last, pending = 0.0, 0.0, {}, None
    clock = {"time": time.time(), "step": start}
    bar = progress(total=n_steps, initial=start, desc=f"pre-training {config.method}", unit="step", disable=not is_main)

    def check_finite(done: int, loss: float) -> None:
        """A NaN/inf loss stops the run before its state is checkpointed; the last good checkpoint stays."""
        if np.isfinite(loss):
            return
        ckpt.wait()
        bar.close()
        raise TrainingDiverged(
            f"the loss is {loss} at step {done}; that state is not checkpointed, the last good checkpoint "
            f"(step {ckpt.latest_step() or 0}) stays in {ckpt.directory}. Lower config.optim.base_lr (now "
            f"{config.optim.base_lr}) or lengthen config.optim.warmup_epochs, and check the band statistics in "
            f"{manifest.root}/manifest.json; the same command with the same --workdir resumes from that checkpoint."
        )

    def flush(done: int, metrics: dict[str, jax.Array], knn: bool = False) -> dict[str, float]:
        nonlocal train_seconds
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.time()
        train_seconds += now - clock["time"]
        ips = (done - clock["step"]) * global_batch / max(now - clock["time"], 1e-9)
        record = {"step": done, "epoch": done / spe, **values, "images_per_sec": ips}
        with jax.transfer_guard("allow"):  # the kNN monitor is an evaluation: it feeds the device on purpose
            record.update(monitor.observe(done, values, state, data_iter, config_dict, knn=knn))
        metrics_log.write(record)
        events.scalars(done, record)
        bar.set_postfix(loss=f"{values['loss']:.4g}", img_s=f"{ips:.0f}")
        logging.info("step %d/%d  loss %.5g  lr %.4g  %.1f images/s%s", done, n_steps, values["loss"], values["lr"],
                     ips, monitor.describe(values))
        check_finite(done, values["loss"])
        clock.update(time=time.time(), step=done)  # the kNN monitor's time is not training time
        return values

    with jax.transfer_guard(config.train.get("transfer_guard", "allow")):
        for step in range(start, n_steps):
            batch = next(data_iter)
            profiler.before(step)
            state, metrics = train_step(state, batch)
            profiler.after(step + 1, metrics)
            if step == start:  # Time the compilation apart from the throughput.
                jax.block_until_ready(metrics)
                compile_seconds = time.time() - clock["time"]
                logging.info("Compiled and ran the first step in %.1f s", compile_seconds)
                clock.update(time=time.time(), step=start + 1)
            if pending is not None:  # the previous log step's metrics, while this step runs
                last = flush(*pending)
                pending = None
            done = step + 1
            if monitor.knn_due(done, n_steps):  # the kNN monitor scores this step's state: synchronous
                last = flush(done, metrics, knn=True)
            elif done % log_every == 0 or done == n_steps:
                for value in metrics.values():
                    value.copy_to_host_async()
                pending = (done, metrics)
            if done % ckpt_every == 0 or done == n_steps or monitor.stop:
                if pending is not None:  # never checkpoint a NaN state
                    last = flush(*pending)
                    pending = None
                if last.get("step") != done:
                    with jax.transfer_guard("allow"):
                        check_finite(done, float(metrics["loss"]))
                ckpt.save(done, state, data_iter, config_dict, info=monitor.state())
            bar.update(1)
            if monitor.stop:
                logging.warning("Stopped at step %d of %d: the embeddings collapsed.", done, n_steps)
                n_steps = done
                break
        if pending is not None:
            last = flush(*pending)
    profiler.stop()
    bar.close()
    ckpt.close()
    data_iter.close()
    trained = n_steps - start
    ips_mean = (trained - 1) * global_batch / train_seconds if trained > 1 and train_seconds > 0 else None

    # Evaluation: the pre-trained encoder and the same encoder at its random initialisation.
    results: dict[str, Any] = {
        "method": config.method, "dataset": manifest.dataset, "data_dir": manifest.root,
        "devices": jax.device_count(), "platform": jax.devices()[0].platform, "processes": jax.process_count(),
        "global_batch": global_batch, "steps": n_steps, "epochs": n_steps / spe, "resumed_from": start,
        "final_metrics": last, "compile_seconds": compile_seconds, "train_images_per_sec": ips_mean,
        "stopped_on_collapse": monitor.stop, "short_run_rules": derived, **monitor.summary(),
    }
    if config.eval.enabled:
        init_vars, _ = jax.jit(lambda: init_variables(method, config, manifest.num_bands))()
        best = monitor.best_state(state) if config.eval.get("use_best", False) else None
        trained_vars = best[0] if best else state
        results["evaluated_checkpoint"] = {"which": "best" if best else "last", "step": best[1] if best else n_steps}
        # One protocol for both encoders: the same BN treatment (config.eval.bn), said in results.json.
        results["eval_bn"] = BN_MODES[config.eval.get("bn", "recompute")]
        results["evaluated_network"] = evaluated_network(config.method)
        results["pretrained"] = evaluate_frozen(frozen, evaluated_encoder(trained_vars, config.method), sources, config.eval,
                                                "pre-trained", recompute_bn=recompute)
        results["random_init"] = evaluate_frozen(frozen, encoder_variables(init_vars), sources, config.eval,
                                                 "random-init", recompute_bn=recompute)
    monitor.close()
    results["wall_seconds"] = time.time() - began
    split = None
    if config.eval.enabled:
        split = "test" if "test" in sources else [s for s in sources if s != "train"][0]
        for encoder in ("pretrained", "random_init"):
            events.scalars(n_steps, results[encoder], prefix=f"eval/{encoder}")
    if is_main:
        write_json(os.path.join(workdir, "results.json"), results)
        if split:
            table = summary_table(results, split)
            with open(os.path.join(workdir, "results.md"), "w") as f:
                f.write(f"# {config.method} on {manifest.dataset} ({split} split)\n\n{table}\n")
            events.text("results", f"{split} split, frozen encoder:\n\n{table}", n_steps)
        print("\n" + end_summary(results, workdir, split, profiler.directory if profile else None,
                                 events.writer is not None), flush=True)
    events.close()
    return results
