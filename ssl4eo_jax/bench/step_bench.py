"""Throughput of the jitted pre-training step on device-resident batches, with XLA's FLOP count,
achieved TFLOP/s, MFU and a breakdown into augmentation, forward/backward and update."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ssl4eo_jax import augment, sharding, train
from ssl4eo_jax.bench.models import apply_model_overrides, model_label, split_model_overrides
from ssl4eo_jax.bench.timing import time_jitted
from ssl4eo_jax.methods import TrainLength, get_method
from ssl4eo_jax.methods.base import method_key
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.precision import compute_dtype
from ssl4eo_jax.presets.files import get_config
from ssl4eo_jax.presets.pretrain import apply_overrides

# Dense bf16 peak TFLOP/s per chip, by jax device_kind prefix.
KNOWN_PEAKS = {
    "NVIDIA H200": 989.0, "NVIDIA H100": 989.0, "NVIDIA A100": 312.0, "NVIDIA L4": 121.0, "NVIDIA A10": 125.0,
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6 lite": 918.0,
}


def xla_flops(lowered_or_compiled: Any) -> float:
    """XLA's FLOP count of a lowered or compiled computation (0 where the backend gives none)."""
    cost = lowered_or_compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def known_peak_tflops(device: jax.Device) -> float | None:
    kind = getattr(device, "device_kind", "")
    for prefix, peak in KNOWN_PEAKS.items():
        if kind.startswith(prefix):
            return peak
    return None


def bench_config(method: str, batch: int, crop: int, dtype: str | None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """The method's BigEarthNet config at the given batch, view size and dtype; ``overrides``
    (``{"model.width": 8}``) shrink it for the tests, and ``{"model.name": "vit_s16"}`` selects
    another encoder (``bench.models``; a ViT's position embeddings are for ``crop`` px)."""

    config = get_config(method, "bigearthnet")
    config.data.global_batch = batch
    config.aug.crop_size = crop
    if dtype:
        config.model.dtype = dtype
    model, rest = split_model_overrides(overrides)
    config.model = apply_model_overrides(config.model, model, crop)
    apply_overrides(config, rest)
    return config


def device_batch(batch: int, patch: int, bands: int, num_classes: int, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    host = {
        "image": rng.integers(300, 4000, size=(batch, patch, patch, bands)).astype(np.uint16),
        "label": rng.integers(0, num_classes, size=(batch,)).astype(np.int32),
        "multi_hot": np.zeros((batch, num_classes), np.float32),
        "index": np.arange(batch, dtype=np.int32),
    }
    return sharding.to_global(host, mesh)


def _step_parts(config: Any, batch: int, bands: int) -> tuple:
    """(config, mesh, method, optimizer, mean, std, jitted step) of a bench config, with fixed band
    statistics and a 100k-step schedule."""
    mesh = sharding.make_mesh()
    sharding.check_batch_size(batch, mesh)
    m = get_method(config, TrainLength(1000.0, 100_000), mesh)
    tx, lr_fn = make_optimizer(config.optim, 1000.0, 100_000, m.param_groups())
    mean, std = np.full((bands,), 1500.0, np.float32), np.full((bands,), 800.0, np.float32)
    return config, mesh, m, tx, mean, std, train.make_train_step(m, tx, lr_fn, config, mean, std, mesh)


def bench_step(method: str, batch: int, patch: int, crop: int, bands: int = 13, dtype: str | None = None,
               iters: int = 5, peak_tflops: float | None = None, overrides: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Images/s of one method's full train step, its FLOPs, MFU and the time breakdown."""
    config, mesh, m, tx, mean, std, step_fn = _step_parts(bench_config(method, batch, crop, dtype, overrides),
                                                          batch, bands)
    state = train.init_state(m, tx, config, bands, mesh)
    batch_arrays = device_batch(batch, patch, bands, 19, mesh)

    began = time.perf_counter()
    compiled = step_fn.lower(state, batch_arrays).compile()
    compile_s = time.perf_counter() - began
    flops = xla_flops(compiled)

    holder = {"state": state}

    def run_step(b):
        holder["state"], metrics = step_fn(holder["state"], b)
        return metrics["loss"]

    step_s = time_jitted(run_step, batch_arrays, iters=iters)

    specs = augment.view_specs(config.aug)
    mean_j, std_j = jnp.asarray(mean), jnp.asarray(std)

    @jax.jit
    def views_only(images, index):
        return augment.make_views(jax.random.key(0), images, index, config.aug, mean_j, std_j, specs)

    aug_s = time_jitted(views_only, batch_arrays["image"], batch_arrays["index"], iters=iters)
    views = views_only(batch_arrays["image"], batch_arrays["index"])
    st = holder["state"]

    @jax.jit
    def fwd_bwd(params, batch_stats, extra, views):
        return jax.value_and_grad(lambda p: m.loss(p, batch_stats, extra, views, jnp.zeros((), jnp.int32), method_key(0, 0)),
                                  has_aux=True)(params)

    fb_s = time_jitted(fwd_bwd, st["params"], st["batch_stats"], st["extra"], views, iters=iters)
    grads = fwd_bwd(st["params"], st["batch_stats"], st["extra"], views)[1]

    @jax.jit
    def update(params, opt, grads):
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    up_s = time_jitted(update, st["params"], st["opt"], grads, iters=iters)
    peak = peak_tflops or known_peak_tflops(jax.devices()[0])
    achieved = flops / step_s / 1e12 if flops else None
    return {
        "method": method, "model": model_label(config.model), "batch": batch, "patch": patch, "crop": crop,
        "dtype": str(compute_dtype(config.model.dtype)),
        "images_per_sec": batch / step_s, "step_ms": 1e3 * step_s, "augment_ms": 1e3 * aug_s,
        "fwd_bwd_ms": 1e3 * fb_s, "update_ms": 1e3 * up_s, "augment_fraction": aug_s / step_s,
        "flops_per_step": flops, "tflops_achieved": achieved, "peak_tflops": peak,
        "mfu": (achieved / peak) if (achieved and peak) else None,  # per device: XLA counts the partitioned program
        "compile_seconds": compile_s, **memory_use(),
    }


def step_memory_bytes(method: str, batch: int, patch: int, crop: int, bands: int = 13, dtype: str | None = None,
                      overrides: dict[str, Any] | None = None) -> int:
    """Bytes XLA allocates on this host's devices together for one train step at ``batch`` (its
    memory analysis, which is per device, times the local devices: a CPU's simulated devices share
    its RAM; compiled, not run). MoCo's queue is rounded to a multiple of the batch, as its config
    would have to be."""
    from ssl4eo_jax.bench.host_memory import compiled_bytes

    config = bench_config(method, batch, crop, dtype, overrides)
    if method == "mocov2":
        config.mocov2.queue_size = max(1, int(config.mocov2.queue_size) // batch) * batch
    config, mesh, m, tx, mean, std, step_fn = _step_parts(config, batch, bands)
    state = jax.eval_shape(lambda: train.init_state(m, tx, config, bands, mesh))
    specs = {"image": ((batch, patch, patch, bands), np.uint16), "label": ((batch,), np.int32),
             "multi_hot": ((batch, 19), np.float32), "index": ((batch,), np.int32)}
    batch_shapes = {k: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharded(mesh))
                    for k, (shape, dt) in specs.items()}
    return compiled_bytes(step_fn.lower(state, batch_shapes).compile()) * jax.local_device_count()


def memory_use() -> dict[str, Any]:
    """Peak device memory of device 0 (``memory_stats``; None on a CPU, which has none) and the
    process's peak host RSS, both in GiB, so far in this process."""
    import resource

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    limit = stats.get("bytes_limit")
    return {"peak_device_gib": peak / 2**30 if peak else None, "device_limit_gib": limit / 2**30 if limit else None,
            "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
