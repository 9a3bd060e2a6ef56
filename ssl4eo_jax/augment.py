"""Batched, jit-able augmentations for multispectral images (NHWC, any number of bands).

A view pipeline is data (``config.aug``): an ordered tuple of op names plus each op's parameters and
probability, so the review's augmentation study is a set of configs (see ``ssl4eo_jax/presets/pretrain.py``).

Spatial ops (random resized crop, resize, flips, 90-degree rotations, Gaussian blur) are linear maps
of the rows and columns, so each view's are composed into two small per-sample matrices
``R_rows`` (out, H) and ``R_cols`` (out, W) and applied with one einsum: channel-count agnostic and
matmul-bound on any accelerator. They act first; the photometric ops (brightness/contrast,
grayscale, solarize, noise, band drop) follow in config order. (The reference applies blur after
the colour ops; blur commutes with brightness and grayscale exactly and with contrast up to border
effects.)

Ops act on the **physical values** as stored (reflectances, backscatter), in float32; each view is
normalised with the band statistics only at the end (``(x - mean) / std``), then mapped onto the
encoder's bands when a transfer needs it. So pre-training and fine-tuning augment identically, and
brightness, grayscale and zero padding mean what they mean on the physical signal. Parameters given
in standard-deviation units (solarize's threshold, the noise's std) are converted with the same
statistics; band drop sets a band to its mean (0 after normalisation).

Randomness: every example's key is ``fold_in(step_key, global_index)``, ``global_index`` being its
position in the global data stream, so an example's augmentation does not depend on the number of
devices or hosts, nor on its position in the batch. Views fold in their index, ops the CRC-32 of
their name (``rng.name_id``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from ssl4eo_jax import rng
from ssl4eo_jax.errors import ConfigError

SPATIAL_OPS = ("crop", "pad_crop", "hflip", "vflip", "rot90", "blur")
PHOTOMETRIC_OPS = ("brightness_contrast", "brightness", "contrast", "grayscale", "solarize", "noise", "band_drop")
# Each op's draws fold in the CRC-32 of its name: adding an op never changes another op's stream.
OP_IDS = {name: rng.name_id(f"augment/{name}") for name in SPATIAL_OPS + PHOTOMETRIC_OPS + ("season",)}


def normalize(images: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """(x - mean) / std per band, in float32; ``images`` keeps its storage dtype until here."""
    return (images.astype(jnp.float32) - mean) / std


def example_keys(key: jax.Array, index: jnp.ndarray) -> jax.Array:
    """One key per example, from its global stream index (layout independent)."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index.astype(jnp.uint32))


# ----------------------------------------------------------------------------- spatial matrices


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
    top = jnp.where(any_ok, jax.random.randint(k_top, (), 0, height - h_sel + 1), (height - fh) // 2)
    left = jnp.where(any_ok, jax.random.randint(k_left, (), 0, width - w_sel + 1), (width - fw) // 2)
    return jnp.stack([top, left, h_sel, w_sel]).astype(jnp.int32)


def linear_resample_matrix(start: jnp.ndarray, length: jnp.ndarray, in_size: int, out_size: int) -> jnp.ndarray:
    """(out_size, in_size) bilinear weights that resize the window [start, start+length) to out_size.

    Half-pixel centres and edge clamping inside the window, as OpenCV's ``INTER_LINEAR`` and
    PyTorch's ``interpolate(mode="bilinear", align_corners=False, antialias=False)`` on the crop.
    """
    length_f = jnp.asarray(length).astype(jnp.float32)
    src = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * (length_f / out_size) - 0.5
    src = jnp.clip(src, 0.0, length_f - 1.0)
    i0 = jnp.floor(src)
    frac = src - i0
    i1 = jnp.minimum(i0 + 1.0, length_f - 1.0)
    cols = jnp.arange(in_size, dtype=jnp.float32)[None, :]
    start_f = jnp.asarray(start).astype(jnp.float32)
    w0 = (cols == (start_f + i0)[:, None]) * (1.0 - frac)[:, None]
    w1 = (cols == (start_f + i1)[:, None]) * frac[:, None]
    return w0 + w1


def gaussian_kernel_radius(sigma: jnp.ndarray) -> jnp.ndarray:
    """OpenCV's kernel radius for ``GaussianBlur(x, (0, 0), sigma)`` on 8-bit images:
    ksize = round(6 sigma + 1), made odd; radius = (ksize - 1) / 2.

    In float arithmetic on purpose: batched int32 ``%``/``//`` here makes XLA:CPU's compiler hang
    for batches above 8 (jax 0.10.2)."""
    ksize = jnp.round(6.0 * sigma + 1.0)
    ksize = ksize + (1.0 - jnp.mod(ksize, 2.0))
    return (ksize - 1.0) / 2.0


def gaussian_blur_matrix(sigma: jnp.ndarray, size: int, max_radius: int) -> jnp.ndarray:
    """(size, size) matrix of a 1-D Gaussian blur with OpenCV's kernel size and its default
    border (BORDER_REFLECT_101); rows sum to 1.

    Entry (i, j) sums the taps d with reflect(i + d) = j: the direct tap d = j - i, and the taps
    that the border reflects onto j, d = -j - i (j > 0) and d = 2(size - 1) - j - i (j < size - 1).
    Written elementwise (no one-hot tensors, which XLA would spend minutes constant-folding).
    """
    if max_radius >= size:
        raise ConfigError(f"A blur radius of {max_radius} px needs views larger than {size} px; lower aug.blur.sigma.")
    radius = gaussian_kernel_radius(sigma)
    taps = jnp.arange(-max_radius, max_radius + 1).astype(jnp.float32)
    norm = jnp.sum(jnp.exp(-(taps**2) / (2.0 * sigma**2)) * (jnp.abs(taps) <= radius))

    def weight(d: jnp.ndarray) -> jnp.ndarray:
        d = d.astype(jnp.float32)
        return jnp.exp(-(d**2) / (2.0 * sigma**2)) * (jnp.abs(d) <= radius) / norm

    i = jnp.arange(size)[:, None]
    j = jnp.arange(size)[None, :]
    return weight(j - i) + (j > 0) * weight(-j - i) + (j < size - 1) * weight(2 * (size - 1) - j - i)


def resample(images: jnp.ndarray, rows: jnp.ndarray, cols: jnp.ndarray) -> jnp.ndarray:
    """Applies per-sample row (B, oh, H) and column (B, ow, W) matrices to images (B, H, W, C)."""
    out = jnp.einsum("boh,bhwc->bowc", rows, images)
    return jnp.einsum("bpw,bowc->bopc", cols, out)


def center_crop_resize(images: jnp.ndarray, fraction: float, out_size: int) -> jnp.ndarray:
    """Evaluation view: the central ``fraction`` of each side, resized to ``out_size``."""
    if images.ndim == 5:  # several dates: evaluate on the first
        images = images[:, 0]
    batch, height, width, _ = images.shape
    ch, cw = max(1, int(round(height * fraction))), max(1, int(round(width * fraction)))
    if ch == out_size == height and cw == out_size == width:
        return images
    rows = linear_resample_matrix(jnp.asarray((height - ch) // 2), jnp.asarray(ch), height, out_size)
    cols = linear_resample_matrix(jnp.asarray((width - cw) // 2), jnp.asarray(cw), width, out_size)
    return resample(images, jnp.broadcast_to(rows, (batch,) + rows.shape), jnp.broadcast_to(cols, (batch,) + cols.shape))


# ----------------------------------------------------------------------------- view specification


@dataclasses.dataclass(frozen=True)
class ViewSpec:
    """One view's pipeline: output size, ordered ops and their parameters (hashable, static)."""

    size: int | None  # None: keep the input size (no crop, no resize)
    ops: tuple[str, ...]
    params: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]

    def p(self, op: str) -> dict[str, Any]:
        return dict(dict(self.params).get(op, ()))


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    return value


def view_spec(aug_cfg: Any, kind: str = "global", index: int = 0) -> ViewSpec:
    """The spec of global view ``index`` or of the local views, from ``config.aug``.

    ``aug_cfg.global_overrides[index]`` / ``aug_cfg.local_overrides`` ({op: {param: value}}) change
    parameters for that view only (e.g. DINO's asymmetric blur and solarize).
    """
    ops = tuple(aug_cfg.ops)
    unknown = [op for op in ops if op not in OP_IDS or op == "season"]
    if unknown:
        raise ConfigError(
            f"Unknown augmentation op(s) {unknown} in config.aug.ops; available: {', '.join(SPATIAL_OPS + PHOTOMETRIC_OPS)}."
        )
    params: dict[str, dict[str, Any]] = {}
    for op in ops:
        section = aug_cfg.get(op)
        params[op] = {k: _freeze(v) for k, v in (section.items() if section is not None else ())}
    if kind == "global":
        overrides = tuple(aug_cfg.get("global_overrides", ()) or ())
        extra = overrides[index] if index < len(overrides) else {}
        size = aug_cfg.crop_size
    else:
        extra = aug_cfg.get("local_overrides", {}) or {}
        size = aug_cfg.local_crop_size
        params.setdefault("crop", {})
        params["crop"] = {**params["crop"], "scale": tuple(aug_cfg.local_crop_scale)}
    for op, changes in dict(extra).items():
        if op not in ops:
            raise ConfigError(f"config.aug overrides op {op!r}, which is not in config.aug.ops {ops}.")
        params[op] = {**params[op], **{k: _freeze(v) for k, v in dict(changes).items()}}
    if "crop" in ops and "pad_crop" in ops:
        raise ConfigError("config.aug.ops has both 'crop' and 'pad_crop'; keep one.")
    if "crop" not in ops and "pad_crop" not in ops:
        size = None
    frozen = tuple((op, tuple(sorted(params[op].items()))) for op in ops)
    return ViewSpec(size=size, ops=ops, params=frozen)


# ----------------------------------------------------------------------------- one view of one image


def _fires(key: jax.Array, p: float) -> jnp.ndarray:
    return jax.random.bernoulli(key, p)


def _spatial(key: jax.Array, height: int, width: int, spec: ViewSpec) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Row and column matrices of one view, and whether to transpose the result."""
    keys = {op: jax.random.fold_in(key, OP_IDS[op]) for op in SPATIAL_OPS}
    if "crop" in spec.ops:
        crop = spec.p("crop")
        top, left, h, w = random_resized_crop_box(keys["crop"], height, width, crop.get("scale", (0.08, 1.0)),
                                                  crop.get("ratio", (3 / 4, 4 / 3)))
        out_h = out_w = spec.size
        rows = linear_resample_matrix(top, h, height, out_h)
        cols = linear_resample_matrix(left, w, width, out_w)
    elif "pad_crop" in spec.ops:
        out_h = out_w = spec.size
        rows, cols = _pad_crop_matrices(keys["pad_crop"], height, width, out_h, spec.p("pad_crop").get("padding", 4))
    else:
        out_h, out_w = height, width
        rows, cols = jnp.eye(height), jnp.eye(width)
    if "blur" in spec.ops:
        blur = spec.p("blur")
        lo, hi = blur.get("sigma", (0.1, 2.0))
        k_fire, k_sigma = jax.random.split(keys["blur"])
        sigma = jax.random.uniform(k_sigma, (), minval=lo, maxval=hi)
        max_radius = int((round(6 * hi + 1) | 1) // 2)
        fire = _fires(k_fire, blur.get("p", 0.5))
        rows = jnp.where(fire, gaussian_blur_matrix(sigma, out_h, max_radius) @ rows, rows)
        cols = jnp.where(fire, gaussian_blur_matrix(sigma, out_w, max_radius) @ cols, cols)
    # Flips and rotations in the output frame: k quarter turns = transpose and/or reversals.
    transpose = jnp.asarray(False)
    flip_rows = jnp.asarray(False)  # reverse the output's rows (vertical flip)
    flip_cols = jnp.asarray(False)  # reverse the output's columns (horizontal flip)
    if "rot90" in spec.ops:
        if out_h != out_w:
            raise ConfigError("config.aug rot90 needs square views; add a crop or use square patches.")
        k_fire, k_turns = jax.random.split(keys["rot90"])
        turns = jnp.where(_fires(k_fire, spec.p("rot90").get("p", 1.0)), jax.random.randint(k_turns, (), 0, 4), 0)
        # np.rot90(A, 1) = flipud(A.T); rot90(A, 2) = flipud(fliplr(A)); rot90(A, 3) = fliplr(A.T).
        transpose = (turns == 1) | (turns == 3)
        flip_rows = (turns == 1) | (turns == 2)
        flip_cols = (turns == 2) | (turns == 3)
    if "hflip" in spec.ops:
        flip_cols = flip_cols ^ _fires(keys["hflip"], spec.p("hflip").get("p", 0.5))
    if "vflip" in spec.ops:
        flip_rows = flip_rows ^ _fires(keys["vflip"], spec.p("vflip").get("p", 0.5))
    # After a transpose, the output's rows come from the column matrix.
    rev_rows = jnp.where(transpose, flip_cols, flip_rows)
    rev_cols = jnp.where(transpose, flip_rows, flip_cols)
    rows = jnp.where(rev_rows, rows[::-1], rows)
    cols = jnp.where(rev_cols, cols[::-1], cols)
    return rows, cols, transpose


def _pad_crop_matrices(key: jax.Array, height: int, width: int, size: int, padding: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """torchvision's ``RandomCrop(size, padding)``: a window of the image padded with physical
    zeros, as the reference pads raw values with 0 before normalising."""
    k_top, k_left = jax.random.split(key)
    top = jax.random.randint(k_top, (), 0, height + 2 * padding - size + 1) - padding
    left = jax.random.randint(k_left, (), 0, width + 2 * padding - size + 1) - padding
    rows = (jnp.arange(height)[None, :] == (top + jnp.arange(size))[:, None]).astype(jnp.float32)
    cols = (jnp.arange(width)[None, :] == (left + jnp.arange(size))[:, None]).astype(jnp.float32)
    return rows, cols


def _uniform_factor(key: jax.Array, strength: float) -> jnp.ndarray:
    return jax.random.uniform(key, (), minval=max(0.0, 1.0 - strength), maxval=1.0 + strength)


def _brightness(key: jax.Array, x: jnp.ndarray, params: dict[str, Any]) -> jnp.ndarray:
    """Multiplies the physical signal by f ~ U(1-b, 1+b)."""
    return _uniform_factor(key, params.get("brightness", 0.4)) * x


def _contrast(key: jax.Array, x: jnp.ndarray, params: dict[str, Any]) -> jnp.ndarray:
    """(x - m) * c + m with m the image's own per-band mean, c ~ U(1-c, 1+c)."""
    c = _uniform_factor(key, params.get("contrast", 0.4))
    m = jnp.mean(x, axis=(0, 1), keepdims=True)
    return (x - m) * c + m


def _photometric(op: str, key: jax.Array, x: jnp.ndarray, params: dict[str, Any], mean: jnp.ndarray,
                 std: jnp.ndarray) -> jnp.ndarray:
    """One op on physical values ``x`` (H, W, C); ``mean``/``std`` convert std-unit parameters."""
    k_fire, k_op = jax.random.split(key)
    p = params.get("p", 1.0)
    if op == "brightness_contrast":  # the reference's RandomApply([Brightness, Contrast], p)
        k_b, k_c = jax.random.split(k_op)
        out = _contrast(k_c, _brightness(k_b, x, params), params)
    elif op == "brightness":
        out = _brightness(k_op, x, params)
    elif op == "contrast":
        out = _contrast(k_op, x, params)
    elif op == "grayscale":  # mean over bands, broadcast back
        out = jnp.broadcast_to(jnp.mean(x, axis=-1, keepdims=True), x.shape)
    elif op == "solarize":  # values at or above mean + threshold * std reflected about it, per band
        t = mean + params.get("threshold", 0.0) * std
        out = jnp.where(x >= t, 2.0 * t - x, x)
    elif op == "noise":  # Gaussian noise of ``std`` band standard deviations
        out = x + params.get("std", 0.1) * std * jax.random.normal(k_op, x.shape, x.dtype)
    elif op == "band_drop":  # 1..max_bands whole bands set to their mean (0 after normalisation)
        n_bands = x.shape[-1]
        k_n, k_perm = jax.random.split(k_op)
        n = jax.random.randint(k_n, (), 1, min(params.get("max_bands", 6), n_bands) + 1)
        rank = jnp.argsort(jax.random.uniform(k_perm, (n_bands,)))
        out = jnp.where(rank < n, jnp.broadcast_to(mean, x.shape), x)
    else:  # pragma: no cover - view_spec rejects unknown ops
        raise ConfigError(f"Unknown augmentation op {op!r}.")
    return jnp.where(_fires(k_fire, p), out, x)


def augment_one(key: jax.Array, image: jnp.ndarray, spec: ViewSpec, mean: jnp.ndarray, std: jnp.ndarray) -> jnp.ndarray:
    """One augmented, normalised view (out, out, C) of one image (H, W, C) in physical values."""
    height, width, _ = image.shape
    rows, cols, transpose = _spatial(key, height, width, spec)
    x = jnp.einsum("oh,hwc,pw->opc", rows, image.astype(jnp.float32), cols)
    if x.shape[0] == x.shape[1]:
        x = jnp.where(transpose, jnp.swapaxes(x, 0, 1), x)
    for op in spec.ops:
        if op in PHOTOMETRIC_OPS:
            x = _photometric(op, jax.random.fold_in(key, OP_IDS[op]), x, spec.p(op), mean, std)
    return (x - mean) / std


# ----------------------------------------------------------------------------- views of a batch


def _pick_dates(key: jax.Array, n_dates: int, n_views: int) -> jnp.ndarray:
    """Dates of the views of one example: the first two global views differ when possible."""
    k_first, k_shift, k_rest = jax.random.split(key, 3)
    first = jax.random.randint(k_first, (), 0, n_dates)
    second = first + jax.random.randint(k_shift, (), 1, max(2, n_dates))
    second = jnp.where(second >= n_dates, second - n_dates, second)  # no int %: see gaussian_kernel_radius
    rest = jax.random.randint(k_rest, (max(0, n_views - 2),), 0, n_dates)
    return jnp.concatenate([first[None], second[None], rest])[:n_views]


def make_views(key: jax.Array, images: jnp.ndarray, index: jnp.ndarray, aug_cfg: Any, mean: jnp.ndarray,
               std: jnp.ndarray, specs: Sequence[ViewSpec] | None = None,
               bands: Callable[[jnp.ndarray], jnp.ndarray] | None = None) -> list[jnp.ndarray]:
    """All normalised views of a batch: ``aug_cfg.global_views`` global views, then
    ``aug_cfg.local_views``; ``bands`` maps each normalised view onto the encoder's bands (transfer).

    ``images`` are physical values in their storage dtype, (B, H, W, C), or (B, T, H, W, C) for
    records holding several dates: then every view takes one date (the first two global views two
    different dates, SSL4EO-S12's season augmentation). ``mean``/``std`` are the data's band
    statistics, in the data's band order.
    """
    if specs is None:
        specs = view_specs(aug_cfg)
    keys = example_keys(key, index)
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    if images.ndim == 5:
        dates = jax.vmap(lambda k: _pick_dates(jax.random.fold_in(k, OP_IDS["season"]), images.shape[1], len(specs)))(keys)
    views = []
    for v, spec in enumerate(specs):
        source = images
        if images.ndim == 5:
            source = jnp.take_along_axis(images, dates[:, v][:, None, None, None, None], axis=1)[:, 0]
        view_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1000 + v))(keys)
        view = jax.vmap(lambda k, im: augment_one(k, im, spec, mean, std))(view_keys, source)
        views.append(view if bands is None else bands(view))
    return views


def view_specs(aug_cfg: Any) -> list[ViewSpec]:
    """The specs of every view of ``config.aug``, global views first."""
    n_global = aug_cfg.get("global_views", 2)
    n_local = aug_cfg.get("local_views", 0)
    return [view_spec(aug_cfg, "global", i) for i in range(n_global)] + [view_spec(aug_cfg, "local") for _ in range(n_local)]
