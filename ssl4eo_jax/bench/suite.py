"""``bench --what=suite``: everything one accelerator slot should measure, in one command.

For each method: the train step at the given batch (compile seconds, images/s, XLA FLOPs, TFLOP/s,
MFU, peak device memory, peak host RSS), the same step fed from ArrayRecord shards by the Grain
pipeline (end-to-end images/s), and, where the device reports its memory limit (GPU/TPU), the
largest batch that fits, estimated from the measured peak and then run to confirm it. The PyTorch
reference step (Barlow Twins on a ResNet-18) is timed beside it when torch is importable and the
Barlow Twins row runs a ResNet-18 too (not with ``--model=vit_s16``). Results are a JSON dict
and a Markdown table; ``--append_docs`` appends the table to docs/benchmarks.md under the device's
name.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Callable

import jax

from ssl4eo_jax.bench.e2e_bench import bench_e2e
from ssl4eo_jax.bench.step_bench import bench_step
from ssl4eo_jax.bench.torch_step import reference_skip
from ssl4eo_jax.report import format_table

HEADER = ["method", "model", "batch", "dtype", "compile s", "step images/s", "e2e images/s", "TFLOP/step", "TFLOP/s",
          "MFU %",           "peak device GiB", "peak host RSS GiB"]


def largest_batch(measured: dict[str, Any], devices: int) -> int | None:
    """The batch that would fill ~90 % of device memory if the peak grows linearly with the batch
    (a multiple of 32 and of the device count); None where the device reports no limit (CPU)."""
    peak, limit = measured.get("peak_device_gib"), measured.get("device_limit_gib")
    if not peak or not limit:
        return None
    step = 32 * devices
    return max(step, int(0.9 * limit / peak * measured["batch"]) // step * step)


def run_suite(methods: list[str], batch: int, patch: int, crop: int, shards: str, workers: int,
              dtype: str | None = None, iters: int = 5, peak_tflops: float | None = None, try_largest: bool = True,
              torch_reference: bool = True, progress: Callable = lambda x, **_: x,
              overrides: dict[str, Any] | None = None,
              on_rows: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
              host_ram_bytes: int | None = None) -> dict[str, Any]:
    """Measures every method (``overrides``: config values for every method, e.g. a smaller model for
    the tests); returns {"rows": [...], "torch_reference": ...}. ``on_rows`` gets the rows so far
    after each method, so that a run killed later (out of time) keeps them. On a CPU, a method whose
    step would not fit in the host's RAM (``host_ram_bytes``, default this machine's) gets a row that
    says so instead of being run into the out-of-memory killer."""
    rows: list[dict[str, Any]] = []
    for method in progress(methods, desc="suite", unit="method"):
        short = host_ram_shortfall(method, batch, patch, crop, dtype, overrides, host_ram_bytes)
        if short:
            rows.append({"method": method, "model": None, "batch": batch, "largest": False, "error": short})
            on_rows(rows)
            continue
        step = bench_step(method, batch, patch, crop, dtype=dtype, iters=iters, peak_tflops=peak_tflops,
                          overrides=overrides)
        e2e = bench_e2e(method, shards, batch, crop, workers=workers, dtype=dtype, iters=iters, overrides=overrides)
        rows.append({**step, "e2e_images_per_sec": e2e["e2e_images_per_sec"], "largest": False})
        big = largest_batch(step, jax.device_count()) if try_largest else None
        if big and big > batch:
            try:
                rows.append({**bench_step(method, big, patch, crop, dtype=dtype, iters=iters, peak_tflops=peak_tflops,
                                          overrides=overrides),
                             "e2e_images_per_sec": None, "largest": True})
            except Exception as e:  # noqa: BLE001 - out of memory: the estimate was too high, say so
                rows.append({"method": method, "model": step["model"], "batch": big, "largest": True,
                             "error": str(e).splitlines()[0][:200]})
        on_rows(rows)
    out: dict[str, Any] = {"rows": rows, "torch_reference": None}
    barlow = next((r for r in rows if r["method"] == "barlow" and not r["largest"] and "error" not in r), None)
    if barlow is not None and torch_reference and reference_skip(barlow["model"]):
        out["torch_reference_skipped"] = reference_skip(barlow["model"])
    elif barlow is not None and torch_reference:
        try:
            from ssl4eo_jax.bench.torch_step import torch_barlow_images_per_sec
        except ImportError:
            pass
        else:
            ref, device = torch_barlow_images_per_sec(batch, crop, iters=iters, dtype=barlow["dtype"])
            out["torch_reference"] = {"images_per_sec": ref, "device": device,
                                      "ratio": barlow["images_per_sec"] / ref}
    return out


def host_ram_shortfall(method: str, batch: int, patch: int, crop: int, dtype: str | None,
                       overrides: dict[str, Any] | None, host_ram_bytes: int | None) -> str | None:
    """On a CPU: why the suite cannot run ``method`` at ``batch`` in the host's RAM, or None. The
    suite holds the step's buffers while it times the forward and backward pass alone, so it needs
    up to twice the step's memory (XLA's memory analysis, compiled, not run)."""
    if jax.devices()[0].platform != "cpu":
        return None  # a device reports running out of its memory as an error the suite records
    from ssl4eo_jax.bench.host_memory import step_budget_bytes
    from ssl4eo_jax.bench.step_bench import step_memory_bytes

    step = step_memory_bytes(method, batch, patch, crop, dtype=dtype, overrides=overrides)
    free = step_budget_bytes(host_ram_bytes)
    if 2 * step <= free:
        return None
    return (f"needs about {2 * step / 2**30:.1f} GiB of host RAM (twice its step's {step / 2**30:.1f} GiB), "
            f"{max(free, 0) / 2**30:.1f} GiB are free; use a smaller --batch (bench --what=memory gives the largest)")


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def suite_table(results: dict[str, Any]) -> str:
    """The suite's Markdown table (and the PyTorch line, when measured)."""
    rows = []
    for r in results["rows"]:
        if "error" in r:
            batch = f"{r['batch']}{' (largest?)' if r['largest'] else ''}"
            rows.append([r["method"], r.get("model") or "-", batch, "-", "-", f"failed: {r['error']}"] + ["-"] * 6)
            continue
        mfu = _fmt(r["mfu"] and 100 * r["mfu"], ".1f")
        rows.append([r["method"], r["model"], f"{r['batch']}{' (largest)' if r['largest'] else ''}", r["dtype"],
                     f"{r['compile_seconds']:.1f}", f"{r['images_per_sec']:.1f}", _fmt(r["e2e_images_per_sec"], ".1f"),
                     f"{r['flops_per_step'] / 1e12:.3f}", _fmt(r["tflops_achieved"], ".2f"), mfu,
                     _fmt(r["peak_device_gib"], ".2f"), f"{r['peak_host_rss_gib']:.2f}"])
    table = format_table(HEADER, rows)
    ref = results.get("torch_reference")
    if ref:
        table += (f"\n\nPyTorch reference step (Barlow Twins, views given) on {ref['device']}: "
                  f"{ref['images_per_sec']:.1f} images/s; ssl4eo-jax / PyTorch = {ref['ratio']:.2f}.")
    if results.get("torch_reference_skipped"):
        table += f"\n\nPyTorch reference step skipped: {results['torch_reference_skipped']}."
    return table


def append_to_docs(path: str, machine: dict[str, Any], command: str, table: str) -> None:
    """Appends the table under a heading naming the device, the date and the command."""
    heading = (f"\n### Suite on {machine['device']} x{machine['device_count']} ({machine['platform']}, jax "
               f"{machine['jax']}, {machine['host_cpus']} host CPUs), {datetime.date.today().isoformat()}\n\n")
    with open(path, "a") as f:
        f.write(f"{heading}`{command}`\n\n{table}\n")


def default_docs_path() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs",
                        "benchmarks.md")
