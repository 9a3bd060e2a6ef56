"""A drop-in ``lax.conv_general_dilated`` that avoids XLA:CPU's slow path for tiny feature maps.

XLA:CPU convolutions are pathologically slow when the output is only a few pixels wide (ResNet's last
stage on 32-64 px inputs): a 3x3 512->512 convolution on a 2x2 map takes ~0.75 s for a batch of
128, 60x slower than the same work as one matrix product. For such layers on the CPU we gather the
kernel taps (im2col) and use a single ``dot``; everywhere else (and on GPU/TPU) the native
convolution runs. Both use the same HWIO kernel, so parameters are interchangeable and results agree
to float rounding.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Output maps with at most this many pixels use im2col on the CPU.
SMALL_OUTPUT_PIXELS = 16
_FORCE_NATIVE = [False]


@contextlib.contextmanager
def native_convolutions() -> Iterator[None]:
    """Traces inside use the native convolution on the CPU too, as on an accelerator (e.g. to count
    an accelerator's FLOPs on a CPU: im2col also multiplies the zero padding)."""
    _FORCE_NATIVE[0] = True
    try:
        yield
    finally:
        _FORCE_NATIVE[0] = False


def _im2col_conv(
    lhs: jnp.ndarray, rhs: jnp.ndarray, strides: Sequence[int], padding: Sequence[tuple[int, int]],
    precision: Any,
) -> jnp.ndarray:
    kh, kw, cin, cout = rhs.shape
    x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    sh, sw = strides
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    taps = [
        x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    cols = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]
    return jnp.dot(cols, rhs.reshape(kh * kw * cin, cout), precision=precision)


def conv_general_dilated(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jnp.ndarray:
    """``lax.conv_general_dilated`` with an im2col path for tiny NHWC outputs on the CPU."""
    native = lambda: lax.conv_general_dilated(  # noqa: E731
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, **kwargs,
    )
    if (
        jax.default_backend() != "cpu"
        or _FORCE_NATIVE[0]
        or lhs.ndim != 4
        or isinstance(padding, str)
        or feature_group_count != 1
        or any(d != 1 for d in (lhs_dilation or (1, 1)))
        or any(d != 1 for d in (rhs_dilation or (1, 1)))
        or lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
        != lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    ):
        return native()
    out_h = (lhs.shape[1] + sum(padding[0]) - rhs.shape[0]) // window_strides[0] + 1
    out_w = (lhs.shape[2] + sum(padding[1]) - rhs.shape[1]) // window_strides[1] + 1
    if out_h * out_w > SMALL_OUTPUT_PIXELS:
        return native()
    return _im2col_conv(lhs, rhs, window_strides, padding, precision)
