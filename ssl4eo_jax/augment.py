"""Batched, jit-able augmentations for multispectral images (NHWC, any number of bands).

Geometric ops are expressed as two small per-sample resampling matrices (rows: ``Ry`` of shape
(out_h, H), columns: ``Rx`` of shape (out_w, W)) applied with one einsum: a random resized crop, a
resize and the flips are all the same matrix product, channel-count agnostic and matmul-bound on
any accelerator.

Randomness: every sample's key is ``fold_in(step_key, global_index)`` where ``global_index`` is the
example's position in the global data stream, so the augmentation of an example does not depend
on the number of devices or hosts, nor on its position in the batch.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp


def normalize(images: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """(x - mean) / std per band, in float32; ``images`` keeps its storage dtype until here."""
    return (images.astype(jnp.float32) - mean) / std


def example_keys(key: jax.Array, index: jnp.ndarray) -> jax.Array:
    """One key per example, from its global stream index (layout independent)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index.astype(jnp.uint32))


def random_resized_crop_box(
    key: jax.Array, height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3), tries: int = 10,
) -> jnp.ndarray:
    """torchvision's ``RandomResizedCrop.get_params`` for one sample: int32 [top, left, h, w].

    ``tries`` candidate boxes are drawn at once (area uniform in ``scale`` x image area, aspect
    ratio log-uniform in ``ratio``, sides rounded); the first that fits is taken, as torchvision
    does sequentially; if none fits, the centre crop clamped to ``ratio`` is used.
    """
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    area = height * width
    target = area * jax.random.uniform(k_area, (tries,), minval=scale[0], maxval=scale[1])
    log_r = jax.random.uniform(k_ratio, (tries,), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    aspect = jnp.exp(log_r)
    w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(ok)
    any_ok = jnp.any(ok)
    # Fallback: torchvision's centre crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    h_sel = jnp.where(any_ok, h[first], fh)
    w_sel = jnp.where(any_ok, w[first], fw)
    top = jnp.where(
        any_ok, jax.random.randint(k_top, (), 0, height - h_sel + 1), (height - fh) // 2
    )
    left = jnp.where(
        any_ok, jax.random.randint(k_left, (), 0, width - w_sel + 1), (width - fw) // 2
    )
    return jnp.stack([top, left, h_sel, w_sel]).astype(jnp.int32)


def linear_resample_matrix(start: jnp.ndarray, length: jnp.ndarray, in_size: int, out_size: int) -> jnp.ndarray:
    """(out_size, in_size) bilinear weights that resize the window [start, start+length) to out_size.

    Half-pixel centres and edge clamping inside the window, as OpenCV's ``INTER_LINEAR`` and
    PyTorch's ``interpolate(mode="bilinear", align_corners=False, antialias=False)`` on the crop.
    """
    length_f = length.astype(jnp.float32)
    src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (length_f / out_size) - 0.5
    src = jnp.clip(src, 0.0, length_f - 1.0)
    i0 = jnp.floor(src)
    frac = src - i0
    i1 = jnp.minimum(i0 + 1.0, length_f - 1.0)
    cols = jnp.arange(in_size, dtype=jnp.float32)[None, :]
    start_f = start.astype(jnp.float32)
    w0 = (cols == (start_f + i0)[:, None]) * (1.0 - frac)[:, None]
    w1 = (cols == (start_f + i1)[:, None]) * frac[:, None]
    return w0 + w1


def resample(images: jnp.ndarray, rows: jnp.ndarray, cols: jnp.ndarray) -> jnp.ndarray:
    """Applies per-sample row (B, oh, H) and column (B, ow, W) matrices to images (B, H, W, C)."""
    out = jnp.einsum("boh,bhwc->bowc", rows, images)
    return jnp.einsum("bpw,bowc->bopc", cols, out)


def crop_flip_matrices(
    key: jax.Array, height: int, width: int, out_size: int, scale: Sequence[float],
    ratio: Sequence[float], hflip: float, vflip: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Row and column matrices of one sample's random resized crop with random flips."""
    k_box, k_h, k_v = jax.random.split(key, 3)
    top, left, h, w = random_resized_crop_box(k_box, height, width, scale, ratio)
    rows = linear_resample_matrix(top, h, height, out_size)
    cols = linear_resample_matrix(left, w, width, out_size)
    cols = jnp.where(jax.random.bernoulli(k_h, hflip), cols[::-1], cols)
    rows = jnp.where(jax.random.bernoulli(k_v, vflip), rows[::-1], rows)
    return rows, cols


def random_crop_flip(key: jax.Array, images: jnp.ndarray, index: jnp.ndarray, cfg: Any) -> jnp.ndarray:
    """One augmented view per image: random resized crop to ``cfg.crop_size`` plus flips."""
    _, height, width, _ = images.shape
    keys = example_keys(key, index)
    rows, cols = jax.vmap(
        lambda k: crop_flip_matrices(
            k, height, width, cfg.crop_size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio),
            cfg.hflip, cfg.vflip,
        )
    )(keys)
    return resample(images, rows, cols)


def two_views(key: jax.Array, images: jnp.ndarray, index: jnp.ndarray, cfg: Any) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Two independently augmented views of every image (the views' keys differ)."""
    k1, k2 = jax.random.split(key)
    return random_crop_flip(k1, images, index, cfg), random_crop_flip(k2, images, index, cfg)


def center_crop_resize(images: jnp.ndarray, fraction: float, out_size: int) -> jnp.ndarray:
    """Evaluation view: the central ``fraction`` of each side, resized to ``out_size``."""
    batch, height, width, _ = images.shape
    ch, cw = max(1, int(round(height * fraction))), max(1, int(round(width * fraction)))
    rows = linear_resample_matrix(jnp.asarray((height - ch) // 2), jnp.asarray(ch), height, out_size)
    cols = linear_resample_matrix(jnp.asarray((width - cw) // 2), jnp.asarray(cw), width, out_size)
    if ch == out_size == height and cw == out_size == width:
        return images
    return resample(images, jnp.broadcast_to(rows, (batch,) + rows.shape), jnp.broadcast_to(cols, (batch,) + cols.shape))
