"""Deterministic separable resampling of one band onto another grid (nearest, bilinear, bicubic).

Conventions (those of OpenCV's ``cv2.resize``): pixel centres are aligned, i.e. output pixel ``j`` of
an axis resized from ``n_in`` to ``n_out`` samples the source at ``x = (j + 0.5) * n_in / n_out - 0.5``;
edges are replicated; bicubic is the cubic convolution kernel with ``a = -0.75`` (OpenCV's
``INTER_CUBIC``; the SSL4EO review resized BigEarthNet bands to 128 px with it); nearest takes the
source pixel that contains the output pixel's centre (pixel replication for integer factors).
There is no anti-aliasing filter when shrinking, as in OpenCV.

Arithmetic is float64 with a fixed order of operations (no BLAS), so results are identical from run
to run; integer bands are rounded half to even and clipped to their dtype's range. A band already on
the target grid is copied unchanged, so native-resolution bands stay bit-exact.
"""

from __future__ import annotations

import numpy as np

METHODS = ("nearest", "bilinear", "bicubic")
CUBIC_A = -0.75


def _cubic(t: np.ndarray) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions ``t`` in [0, 1)."""
    a = CUBIC_A
    d = np.stack([1 + t, t, 1 - t, 2 - t], axis=-1)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far)


def axis_weights(
    n_in: int, n_out: int, method: str, start: int = 0, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, each (count, taps), of output pixels ``start..start+count-1``.

    The output axis has ``n_out`` pixels in total (a window of it can be asked for, e.g. one patch of
    a scene); indices are into the full source axis of ``n_in`` pixels, clamped to it.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown resampling method {method!r}; choose one of {', '.join(METHODS)}.")
    count = n_out - start if count is None else count
    scale = n_in / n_out
    j = np.arange(start, start + count, dtype=np.float64)
    if method == "nearest":
        idx = np.minimum(np.floor((j + 0.5) * scale), n_in - 1).astype(np.int64)[:, None]
        return idx, np.ones_like(idx, dtype=np.float64)
    x = (j + 0.5) * scale - 0.5
    x0 = np.floor(x)
    t = x - x0
    if method == "bilinear":
        offsets, weights = np.array([0, 1]), np.stack([1 - t, t], axis=-1)
    else:
        offsets, weights = np.array([-1, 0, 1, 2]), _cubic(t)
    idx = np.clip(x0.astype(np.int64)[:, None] + offsets[None, :], 0, n_in - 1)
    return idx, weights


def _apply(src: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Weighted sum of gathered rows (axis 0) or columns (axis 1), taps added in a fixed order."""
    shape = (-1, 1) if axis == 0 else (1, -1)
    out = np.take(src, idx[:, 0], axis=axis) * w[:, 0].reshape(shape)
    for k in range(1, idx.shape[1]):
        out += np.take(src, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return out


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 values in ``dtype``: rounded half to even and clipped for integers."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def resample_window(
    src: np.ndarray, full_in: tuple[int, int], full_out: tuple[int, int], window: tuple[int, int, int, int],
    method: str, src_offset: tuple[int, int] = (0, 0), dtype: np.dtype | None = None,
) -> np.ndarray:
    """Resamples a band of full size ``full_in`` to ``full_out`` and returns the output ``window``.

    ``window`` is (row, col, height, width) on the output grid. ``src`` may be a crop of the full band
    starting at ``src_offset`` (row, col) that covers the taps ``source_window`` asks for.
    """
    row, col, height, width = window
    ri, rw = axis_weights(full_in[0], full_out[0], method, row, height)
    ci, cw = axis_weights(full_in[1], full_out[1], method, col, width)
    values = src.astype(np.float64)
    values = _apply(values, ri - src_offset[0], rw, axis=0)
    values = _apply(values, ci - src_offset[1], cw, axis=1)
    return to_dtype(values, src.dtype if dtype is None else dtype)


def source_window(
    full_in: tuple[int, int], full_out: tuple[int, int], window: tuple[int, int, int, int], method: str
) -> tuple[int, int, int, int]:
    """The (row, col, height, width) of the source pixels that ``window`` of the output needs."""
    row, col, height, width = window
    ri, _ = axis_weights(full_in[0], full_out[0], method, row, height)
    ci, _ = axis_weights(full_in[1], full_out[1], method, col, width)
    return int(ri.min()), int(ci.min()), int(ri.max() - ri.min() + 1), int(ci.max() - ci.min() + 1)


def resize(band: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """The whole 2-D ``band`` on a ``size`` grid, in its own dtype (a copy if already that size)."""
    if band.shape == tuple(size):
        return band.copy()
    return resample_window(band, band.shape, tuple(size), (0, 0, size[0], size[1]), method)
