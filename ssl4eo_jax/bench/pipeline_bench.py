"""Throughput of the host input pipeline: ArrayRecord shards -> Grain workers -> device arrays."""

from __future__ import annotations

import time

import jax

from ssl4eo_jax import sharding
from ssl4eo_jax.data import open_split, pipeline


def pipeline_images_per_sec(root: str, batch: int, workers: int, n_batches: int = 20) -> float:
    """Images/s delivered as global device arrays by ``DeviceIterator`` with ``workers`` processes."""
    src = open_split(root, "train")
    mesh = sharding.make_mesh()
    it = pipeline.DeviceIterator(pipeline.train_dataset(src, batch, seed=0), mesh, workers=workers)
    try:
        for _ in range(3):  # start-up: worker processes, first reads
            jax.block_until_ready(next(it)["image"])
        start = time.perf_counter()
        for _ in range(n_batches):
            jax.block_until_ready(next(it)["image"])
        return n_batches * batch / (time.perf_counter() - start)
    finally:
        it.close()
