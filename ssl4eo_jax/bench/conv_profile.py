"""``bench --what=layers``: where a ResNet train step's time goes, convolution by convolution.

Each distinct convolution of a BasicBlock ResNet (ResNet-18/34) at the bench's view size and batch
is timed in its three parts, forward, input gradient (dx) and kernel gradient (dw), in XLA (through
``ssl4eo_jax.models.conv.conv_general_dilated``, exactly as the model runs it) and, when torch is
importable, in PyTorch on the same device. Times are weighted by how often the shape occurs in the
network per view, and the stem convolution has no dx in training (its input is data), so the total
is the convolutions' share of one view's forward and backward pass. This is the profile behind
the CPU step ratio against PyTorch (issue 15); XLA:CPU options are compared by running it under
another ``XLA_FLAGS``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssl4eo_jax.bench.timing import time_jitted
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.models.conv import conv_general_dilated
from ssl4eo_jax.models.resnet import resnet

PARTS = ("fwd", "dx", "dw")


@dataclasses.dataclass(frozen=True)
class ConvShape:
    """One convolution of the network: input size, channels, kernel, stride and its count per view."""

    name: str
    size: int
    cin: int
    cout: int
    kernel: int
    stride: int
    count: int
    needs_dx: bool = True

    @property
    def out_size(self) -> int:
        return (self.size + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1

    def flops(self, batch: int) -> float:
        """Multiply-adds x 2 of the forward pass over the taps that meet the input, not its zero
        padding, as XLA's cost analysis counts them (dx and dw cost the same each)."""
        pad = self.kernel // 2
        taps = sum(0 <= o * self.stride + k - pad < self.size for o in range(self.out_size) for k in range(self.kernel))
        return 2.0 * batch * taps**2 * self.cin * self.cout


def resnet_convolutions(model: str, crop: int, bands: int, stem: str = "imagenet", width: int = 64) -> list[ConvShape]:
    """The distinct convolutions of a BasicBlock ResNet on ``crop`` px views, with their counts."""
    net = resnet(model)
    if net.bottleneck:
        raise ConfigError(f"--what=layers profiles BasicBlock ResNets (resnet18, resnet34), not {model}.")
    if stem == "imagenet":
        shapes, size = [ConvShape("conv1 7x7/2", crop, bands, width, 7, 2, 1, needs_dx=False)], -(-crop // 2)
    else:
        shapes, size = [ConvShape("conv1 3x3", crop, bands, width, 3, 1, 1, needs_dx=False)], crop
    size = (size + 2 - 3) // 2 + 1  # the stem's 3x3/2 max-pool
    cin = width
    for stage, blocks in enumerate(net.stage_sizes):
        cout = width * 2**stage
        if stage == 0:
            shapes.append(ConvShape(f"layer1 3x3 {cout}", size, cout, cout, 3, 1, 2 * blocks))
            continue
        first = ConvShape(f"layer{stage + 1} 3x3/2 {cin}->{cout}", size, cin, cout, 3, 2, 1)
        size = first.out_size
        shapes += [first,
                   ConvShape(f"layer{stage + 1} 1x1/2 {cin}->{cout}", first.size, cin, cout, 1, 2, 1),
                   ConvShape(f"layer{stage + 1} 3x3 {cout}", size, cout, cout, 3, 1, 2 * blocks - 1)]
        cin = cout
    return shapes


def _xla_parts(shape: ConvShape, batch: int, iters: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, shape.size, shape.size, shape.cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(shape.kernel, shape.kernel, shape.cin, shape.cout)) * 0.05, jnp.float32)
    pad = ((shape.kernel // 2,) * 2,) * 2

    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        return conv_general_dilated(x, w, (shape.stride,) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    dy = jnp.full(jax.eval_shape(conv, x, w).shape, 0.01, jnp.float32)
    fns: dict[str, Callable[..., Any]] = {
        "fwd": jax.jit(conv),
        "dx": jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0]),
        "dw": jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]),
    }
    args = {"fwd": (x, w), "dx": (x, w, dy), "dw": (x, w, dy)}
    return {part: time_jitted(fns[part], *args[part], iters=iters, warmup=1) for part in PARTS}


def _torch_parts(shape: ConvShape, batch: int, iters: int) -> dict[str, float]:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, shape.cin, shape.size, shape.size, generator=gen).to(device).requires_grad_()
    w = (0.05 * torch.randn(shape.cout, shape.cin, shape.kernel, shape.kernel, generator=gen)).to(device).requires_grad_()
    conv = lambda: torch.nn.functional.conv2d(x, w, stride=shape.stride, padding=shape.kernel // 2)  # noqa: E731
    y = conv()
    dy = torch.full_like(y, 0.01)
    fns = {
        "fwd": lambda: conv().detach(),
        "dx": lambda: torch.autograd.grad(y, x, dy, retain_graph=True)[0],
        "dw": lambda: torch.autograd.grad(y, w, dy, retain_graph=True)[0],
    }
    out = {}
    for part, fn in fns.items():
        fn()
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                torch.cuda.synchronize()
            began = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        out[part] = sorted(times)[len(times) // 2]
    return out


def profile_convolutions(model: str, batch: int, crop: int, bands: int = 13, iters: int = 5, with_torch: bool = True,
                         progress: Callable = lambda x, **_: x) -> dict[str, Any]:
    """Seconds per part of every distinct convolution (XLA and, if available, PyTorch) and the
    count-weighted totals per view; a part a network does not run (the stem's dx) counts zero."""
    import importlib.util

    with_torch = with_torch and importlib.util.find_spec("torch") is not None
    rows = []
    for shape in progress(resnet_convolutions(model, crop, bands), desc="convolutions", unit="shape"):
        row: dict[str, Any] = {**dataclasses.asdict(shape), "gflop": shape.flops(batch) / 1e9,
                               "xla": _xla_parts(shape, batch, iters)}
        if with_torch:
            row["torch"] = _torch_parts(shape, batch, iters)
        rows.append(row)
    totals = {impl: {part: sum(r["count"] * r[impl][part] for r in rows if part != "dx" or r["needs_dx"])
                     for part in PARTS}
              for impl in ("xla", "torch") if not rows or impl in rows[0]}
    return {"model": model, "batch": batch, "crop": crop, "bands": bands, "rows": rows, "totals": totals,
            "xla_flags": _xla_flags()}


def _xla_flags() -> str:
    import os

    return os.environ.get("XLA_FLAGS", "")


def profile_table(result: dict[str, Any]) -> str:
    """Markdown: ms per part and implementation for each shape, then the count-weighted totals."""
    from ssl4eo_jax.report import format_table

    impls = list(result["totals"])
    header = ["convolution", "out px", "x per view", "GFLOP fwd"] + [f"{i} {p} ms" for i in impls for p in PARTS]
    if "torch" in impls:
        header.append("xla / torch")
    rows = []
    for r in result["rows"]:
        ms = [("-" if p == "dx" and not r["needs_dx"] else f"{1e3 * r[i][p]:.1f}") for i in impls for p in PARTS]
        row = [r["name"], f"{ConvShape(**{k: r[k] for k in _FIELDS}).out_size}", r["count"], f"{r['gflop']:.2f}"] + ms
        if "torch" in impls:
            parts = [p for p in PARTS if p != "dx" or r["needs_dx"]]
            row.append(f"{sum(r['xla'][p] for p in parts) / sum(r['torch'][p] for p in parts):.2f}")
        rows.append(row)
    total = ["all, weighted by count", "", "", ""] + [f"{1e3 * result['totals'][i][p]:.0f}" for i in impls for p in PARTS]
    if "torch" in impls:
        total.append(f"{sum(result['totals']['xla'].values()) / sum(result['totals']['torch'].values()):.2f}")
    return format_table(header, rows + [total])


_FIELDS = [f.name for f in dataclasses.fields(ConvShape)]
