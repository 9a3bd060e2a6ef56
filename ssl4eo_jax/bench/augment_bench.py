"""Throughput of the on-device view pipeline (the full reference pipeline, two views)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssl4eo_jax import augment
from ssl4eo_jax.bench.timing import time_jitted
from ssl4eo_jax.presets import pretrain as common


def augment_images_per_sec(batch: int, patch: int, crop: int, bands: int = 13, iters: int = 10,
                           ops: tuple[str, ...] = common.FULL_AUG_OPS) -> tuple[float, float]:
    """(images/s, seconds per batch) of normalising and making two ``crop`` views of ``patch`` px
    uint16 images on the default device."""
    cfg = common.aug_config(crop, ops)
    mean, std = jnp.full((bands,), 1500.0), jnp.full((bands,), 800.0)
    specs = augment.view_specs(cfg)

    @jax.jit
    def views(key, images, index):
        return augment.make_views(key, images, index, cfg, mean, std, specs)

    images = jax.random.randint(jax.random.key(0), (batch, patch, patch, bands), 300, 4000).astype(jnp.uint16)
    index = jnp.arange(batch)
    seconds = time_jitted(views, jax.random.key(1), images, index, iters=iters)
    return batch / seconds, seconds
