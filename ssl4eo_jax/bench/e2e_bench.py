"""The train step fed by the real input pipeline, against the same step on a resident batch."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from ssl4eo_jax import sharding, train
from ssl4eo_jax.bench.models import model_label
from ssl4eo_jax.bench.step_bench import bench_config
from ssl4eo_jax.data import open_split, pipeline
from ssl4eo_jax.methods import TrainLength, get_method
from ssl4eo_jax.optim import make_optimizer


def bench_e2e(method: str, root: str, batch: int, crop: int, workers: int, dtype: str | None = None,
              iters: int = 5, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Images/s with batches from Grain (``workers`` processes) and with one resident batch."""
    config = bench_config(method, batch, crop, dtype, overrides)
    src = open_split(root, "train")
    mesh = sharding.make_mesh()
    m = get_method(config, TrainLength(1000.0, 100_000), mesh)
    tx, lr_fn = make_optimizer(config.optim, 1000.0, 100_000, m.param_groups())
    mean, std = src.manifest.band_stats()
    state = train.init_state(m, tx, config, src.manifest.num_bands, mesh)
    step_fn = train.make_train_step(m, tx, lr_fn, config, mean, std, mesh)
    it = pipeline.DeviceIterator(pipeline.train_dataset(src, batch, seed=0), mesh, workers=workers)
    try:
        resident = next(it)
        for _ in range(2):  # compile and warm up
            state, metrics = step_fn(state, resident)
        jax.block_until_ready(metrics)
        start = time.perf_counter()
        for _ in range(iters):
            state, metrics = step_fn(state, resident)
        jax.block_until_ready(metrics)
        step_only = iters * batch / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(iters):
            state, metrics = step_fn(state, next(it))
        jax.block_until_ready(metrics)
        e2e = iters * batch / (time.perf_counter() - start)
    finally:
        it.close()
    return {"method": method, "model": model_label(config.model), "batch": batch, "workers": workers,
            "step_only_images_per_sec": step_only,
            "e2e_images_per_sec": e2e, "fraction": e2e / step_only, "loss_finite": bool(np.isfinite(float(metrics["loss"])))}
