"""``python -m ssl4eo_jax.bench --what=augment|pipeline|step|e2e|all [options]``.

augment   the on-device view pipeline (two 112 px views of 128 px 13-band patches), and the
          reference's host path (per-band GeoTIFF reads + NumPy/OpenCV augmentation in worker
          processes) on the same machine, with the ratio; and the augmentation's share of a train step
pipeline  ArrayRecord shards -> Grain workers -> device arrays, per worker count, against the step rate
step      the jitted train step per method: images/s, XLA FLOPs, TFLOP/s, MFU, time breakdown;
          ``--model=vit_s16`` (vit_tiny, vit_b16, resnet34, ...) swaps the method's encoder
e2e       the real input pipeline feeding the train step: images/s and the fraction of step-only speed
suite     per method: compile time, step and end-to-end images/s, FLOPs, MFU, peak memory, the largest
          batch that fits (accelerators), the PyTorch step: one command for a short accelerator slot
layers    where a ResNet-18 (or --model=resnet34) step's time goes: each convolution's forward, input
          and kernel gradient in XLA and in PyTorch (when importable), weighted by its count (ResNets only)
memory    the largest global batch per method whose train step fits in this host's RAM (CPU), from
          XLA's memory analysis of the compiled step (nothing runs)
projection  a benchmark grid's compute on paper (``--config=configs/benchmark.py:review``): XLA's FLOPs of
          every pre-training step times its steps, plus the evaluations, as hours on one H100 and on a
          TPU v5e-8 slice at 30/45/60 % MFU (nothing is trained; each step is only lowered)
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags
from ml_collections import config_flags

from ssl4eo_jax.cli_flags import parse_flags
from ssl4eo_jax.errors import run_guarded

FLAGS = flags.FLAGS
flags.DEFINE_enum("what", "augment", ["augment", "pipeline", "step", "e2e", "suite", "layers", "memory", "projection", "all"], "What to measure.")
_GRID = config_flags.DEFINE_config_file("config", "configs/benchmark.py:review",
                                        "With --what=projection: the benchmark grid (configs/benchmark.py:<preset>).")
flags.DEFINE_integer("batch", None, "Global batch (default 256 on an accelerator, 64 on a CPU).")
flags.DEFINE_integer("patch", 128, "Patch size in pixels.")
flags.DEFINE_integer("crop", 112, "View size in pixels.")
flags.DEFINE_list("methods", ["barlow"], "Methods for --what=step/e2e (see ssl4eo_jax.methods.METHODS).")
flags.DEFINE_string("model", None, "Encoder for --what=step/e2e/suite/memory/layers: resnet18, resnet34, resnet50, "
                    "vit_tiny, vit_s16, vit_b16 (default: each method config's own).")
flags.DEFINE_integer("patch_size", None, "A ViT encoder's patch size in pixels (default: the model's, 16); "
                     "--patch is the data's patch.")
flags.DEFINE_list("workers", ["1", "2"], "Worker process counts to try (input pipeline and reference loader).")
flags.DEFINE_string("dtype", None, "Model compute dtype (float32, bfloat16); default: the config's.")
flags.DEFINE_integer("iters", 5, "Timed iterations per measurement.")
flags.DEFINE_integer("images", 512, "Images for the host-pipeline measurements.")
flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s per device for MFU (default: known peak of the device).")
flags.DEFINE_string("workdir", os.path.join(tempfile.gettempdir(), "ssl4eo_jax_bench"), "Where test data is written.")
flags.DEFINE_string("out", None, "Also write the results as JSON here.")
flags.DEFINE_bool("append_docs", False, "With --what=suite: append the table to docs/benchmarks.md.")
flags.DEFINE_bool("torch", True, "With --what=step or suite: also time the PyTorch reference step (needs torch).")


def _batch() -> int:
    import jax

    if FLAGS.batch:
        return FLAGS.batch
    return 64 if jax.devices()[0].platform == "cpu" else 256


def _model_overrides() -> dict:
    """``--model`` / ``--patch_size`` as step-bench overrides (``{}``: each method's own encoder)."""
    from ssl4eo_jax.bench.models import check_model
    from ssl4eo_jax.errors import ConfigError
    from ssl4eo_jax.models.vit import VIT_SIZES, is_vit

    out: dict = {}
    if FLAGS.model:
        out["model.name"] = check_model(FLAGS.model, "--model")
    if FLAGS.patch_size is not None:
        if FLAGS.model and not is_vit(FLAGS.model):
            raise ConfigError(f"--patch_size is a ViT's setting; --model={FLAGS.model} has no patches.")
        if FLAGS.patch_size < 1:
            raise ConfigError(f"--patch_size={FLAGS.patch_size}: give a positive number of pixels.")
        out["model.patch_size"] = FLAGS.patch_size
    patch = FLAGS.patch_size or (VIT_SIZES[FLAGS.model][3] if FLAGS.model and is_vit(FLAGS.model) else None)
    if patch and FLAGS.crop % patch:
        raise ConfigError(f"--crop={FLAGS.crop} is not a multiple of the ViT's patch size {patch} (--patch_size).")
    return out


def _print_table(title: str, header: list[str], rows: list[list]) -> None:
    from ssl4eo_jax.report import format_table

    print(f"\n{title}\n{format_table(header, rows)}")


def run_augment(results: dict) -> None:
    from ssl4eo_jax.bench import fixtures
    from ssl4eo_jax.bench.augment_bench import augment_images_per_sec
    from ssl4eo_jax.bench.reference import reference_images_per_sec

    batch = _batch()
    ours, seconds = augment_images_per_sec(batch, FLAGS.patch, FLAGS.crop, iters=FLAGS.iters)
    rows = [["ssl4eo-jax, on device (jit)", "-", f"{ours:.0f}", "1.00"]]
    out = {"on_device_images_per_sec": ours, "batch": batch, "seconds_per_batch": seconds, "reference": {}}
    try:
        tif_root = fixtures.write_band_tifs(os.path.join(FLAGS.workdir, "band_tifs"), 64)
        for w in [int(w) for w in FLAGS.workers]:
            ref = reference_images_per_sec(tif_root, FLAGS.images // 2, w, FLAGS.crop)
            out["reference"][w] = ref
            rows.append([f"reference: GeoTIFF + NumPy/OpenCV, {w} worker(s)", w, f"{ref:.0f}", f"{ours / ref:.2f}"])
    except ImportError as e:
        print(f"(reference baseline skipped: {e}; pip install -e '.[bench]')")
    _print_table(f"Two {FLAGS.crop} px views of {FLAGS.patch} px 13-band patches, batch {batch}",
                 ["path", "workers", "images/s", "ours / this"], rows)
    results["augment"] = out


def run_pipeline(results: dict) -> None:
    from ssl4eo_jax.bench import fixtures
    from ssl4eo_jax.bench.pipeline_bench import pipeline_images_per_sec

    batch = _batch()
    root = fixtures.write_shards(os.path.join(FLAGS.workdir, f"shards_{FLAGS.patch}"), max(FLAGS.images, 4 * batch),
                                 FLAGS.patch)
    rows, out = [], {}
    for w in [int(w) for w in FLAGS.workers]:
        ips = pipeline_images_per_sec(root, batch, w, n_batches=max(5, FLAGS.images // batch))
        out[w] = ips
        rows.append([w, f"{ips:.0f}"])
    _print_table(f"Host pipeline: {FLAGS.patch} px uint16 13-band shards -> device arrays, batch {batch}",
                 ["workers", "images/s"], rows)
    results["pipeline"] = out


def run_step(results: dict) -> None:
    from ssl4eo_jax.bench.step_bench import bench_step

    batch, overrides = _batch(), _model_overrides()
    rows, out = [], []
    for method in FLAGS.methods:
        r = bench_step(method, batch, FLAGS.patch, FLAGS.crop, dtype=FLAGS.dtype, iters=FLAGS.iters,
                       peak_tflops=FLAGS.peak_tflops, overrides=overrides)
        out.append(r)
        mfu = f"{100 * r['mfu']:.1f}" if r["mfu"] else "n/a"
        tflops = f"{r['tflops_achieved']:.2f}" if r["tflops_achieved"] else "n/a"
        rows.append([method, r["model"], r["dtype"], f"{r['images_per_sec']:.1f}", f"{r['step_ms']:.1f}",
                     f"{r['augment_ms']:.1f}", f"{r['fwd_bwd_ms']:.1f}", f"{r['update_ms']:.1f}",
                     f"{100 * r['augment_fraction']:.1f}",
                     f"{r['flops_per_step'] / 1e12:.3f}", tflops, mfu,
                     f"{r['peak_device_gib']:.2f}" if r["peak_device_gib"] else "n/a", f"{r['peak_host_rss_gib']:.2f}"])
    _print_table(f"Train step, batch {batch}, {FLAGS.crop} px views of {FLAGS.patch} px patches (peak memory: "
                 "so far in this process)",
                 ["method", "model", "dtype", "images/s", "step ms", "augment ms", "fwd+bwd ms", "update ms",
                  "augment %", "TFLOP/step", "TFLOP/s", "MFU %", "peak device GiB", "peak host RSS GiB"], rows)
    results["step"] = out
    if FLAGS.torch and "barlow" in FLAGS.methods:
        _run_torch_reference(results, batch, next(r for r in out if r["method"] == "barlow"))


def _run_torch_reference(results: dict, batch: int, ours: dict) -> None:
    from ssl4eo_jax.bench.torch_step import reference_skip

    skip = reference_skip(ours["model"])
    if skip:
        print(f"\n(PyTorch reference skipped: {skip})")
        return
    try:
        from ssl4eo_jax.bench.torch_step import torch_barlow_images_per_sec
    except ImportError as e:  # pragma: no cover - torch is optional
        print(f"(PyTorch reference skipped: {e}; pip install -e '.[bench]')")
        return
    ref, device = torch_barlow_images_per_sec(batch, FLAGS.crop, iters=FLAGS.iters, dtype=ours["dtype"])
    ratio = ours["images_per_sec"] / ref
    _print_table(f"Barlow Twins step, batch {batch}: ssl4eo-jax (whole step incl. on-device augmentation) vs the "
                 "PyTorch reference (model step only, views given)",
                 ["implementation", "device", "images/s", "ratio"],
                 [["ssl4eo-jax", results["machine"]["device"], f"{ours['images_per_sec']:.1f}", f"{ratio:.2f}"],
                  ["PyTorch reference", device, f"{ref:.1f}", "1.00"]])
    results["torch_reference"] = {"images_per_sec": ref, "device": device, "ratio": ratio}


def main(argv: list[str]) -> None:
    del argv
    from ssl4eo_jax.bench.timing import machine

    results = {"machine": machine()}
    print(f"Machine: {results['machine']}")
    todo = ["augment", "pipeline", "step"] if FLAGS.what == "all" else [FLAGS.what]
    runners = {"augment": run_augment, "pipeline": run_pipeline, "step": run_step, "e2e": run_e2e,
               "suite": run_suite, "layers": run_layers, "memory": run_memory, "projection": run_projection}
    for what in todo:
        runners[what](results)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"\nWrote {FLAGS.out}")


def run_e2e(results: dict) -> None:
    from ssl4eo_jax.bench import fixtures
    from ssl4eo_jax.bench.e2e_bench import bench_e2e

    batch, overrides = _batch(), _model_overrides()
    root = fixtures.write_shards(os.path.join(FLAGS.workdir, f"shards_{FLAGS.patch}"), max(FLAGS.images, 4 * batch),
                                 FLAGS.patch)
    rows, out = [], []
    for method in FLAGS.methods:
        r = bench_e2e(method, root, batch, FLAGS.crop, workers=int(FLAGS.workers[-1]), dtype=FLAGS.dtype,
                      iters=FLAGS.iters, overrides=overrides)
        out.append(r)
        rows.append([method, r["model"], r["workers"], f"{r['step_only_images_per_sec']:.1f}",
                     f"{r['e2e_images_per_sec']:.1f}", f"{100 * r['fraction']:.0f}"])
    _print_table(f"End to end, batch {batch}", ["method", "model", "workers", "step only images/s",
                                                 "with input images/s", "fraction %"], rows)
    results["e2e"] = out


def run_suite(results: dict) -> None:
    import sys

    from ssl4eo_jax.bench import fixtures, suite
    from ssl4eo_jax.progress import progress

    batch, overrides = FLAGS.batch or 256, _model_overrides()
    root = fixtures.write_shards(os.path.join(FLAGS.workdir, f"shards_{FLAGS.patch}"), max(FLAGS.images, 4 * batch),
                                 FLAGS.patch)

    def keep(rows: list[dict]) -> None:  # each method's row as soon as it is measured
        print(f"\n{suite.suite_table({'rows': rows[-1:]})}", flush=True)
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                json.dump({**results, "suite": {"rows": rows, "partial": True}}, f, indent=2, default=str)

    out = suite.run_suite(FLAGS.methods, batch, FLAGS.patch, FLAGS.crop, root, workers=int(FLAGS.workers[-1]),
                          dtype=FLAGS.dtype, iters=FLAGS.iters, peak_tflops=FLAGS.peak_tflops,
                          try_largest=True, torch_reference=FLAGS.torch, progress=progress, on_rows=keep,
                          overrides=overrides)
    table = suite.suite_table(out)
    print(f"\nSuite on {results['machine']['device']}, {FLAGS.crop} px views of {FLAGS.patch} px patches:\n{table}")
    if FLAGS.append_docs:
        command = "python -m ssl4eo_jax.bench " + " ".join(sys.argv[1:])
        suite.append_to_docs(suite.default_docs_path(), results["machine"], command, table)
        print(f"Appended to {suite.default_docs_path()}")
    results["suite"] = out


def run_layers(results: dict) -> None:
    from ssl4eo_jax.bench.conv_profile import profile_convolutions, profile_table
    from ssl4eo_jax.models.vit import is_vit
    from ssl4eo_jax.progress import progress

    model = FLAGS.model or "resnet18"
    _model_overrides()  # the flags' own checks
    if is_vit(model):
        print(f"--what=layers profiles a ResNet's convolutions (resnet18, resnet34); --model={model} is a ViT: "
              "--what=step gives its FLOPs, TFLOP/s and MFU.")
        return
    batch = _batch()
    out = profile_convolutions(model, batch, FLAGS.crop, iters=FLAGS.iters, with_torch=FLAGS.torch,
                               progress=progress)
    print(f"\n{model} convolutions, batch {batch}, {FLAGS.crop} px 13-band views, float32, median ms "
          f"(XLA_FLAGS={out['xla_flags'] or '(unset)'}):\n{profile_table(out)}")
    results["layers"] = out


def run_memory(results: dict) -> None:
    import jax

    from ssl4eo_jax.bench.host_memory import FILL, host_memory_bytes, largest_batch, step_budget_bytes
    from ssl4eo_jax.bench.step_bench import step_memory_bytes
    from ssl4eo_jax.progress import progress

    if jax.devices()[0].platform != "cpu":
        print("--what=memory bounds a CPU's step by the host's RAM; on an accelerator, --what=suite finds the "
              "largest batch from the device's own memory limit.")
        return
    ram, overrides = host_memory_bytes(), _model_overrides()
    rows, out = [], []
    for method in progress(FLAGS.methods, desc="memory", unit="method"):
        budget = step_budget_bytes(ram)
        r = largest_batch(lambda b: step_memory_bytes(method, b, FLAGS.patch, FLAGS.crop, dtype=FLAGS.dtype,
                                                          overrides=overrides), budget)
        out.append({"method": method, **r})
        rows.append([method, r["batch"], f"{r['bytes'] / 2**30:.2f}", f"{r['bytes_per_image'] / 2**20:.1f}",
                     f"{r['fixed_bytes'] / 2**30:.2f}", "yes" if r["fits"] else "no"])
    encoder = f", --model={FLAGS.model}" if FLAGS.model else ""
    _print_table(f"Largest global batch whose step fits in {FILL:.0%} of this host's {ram / 2**30:.1f} GiB RAM "
                 f"(minus this process's resident memory){encoder}, {FLAGS.crop} px views of {FLAGS.patch} px patches",
                 ["method", "largest batch", "step GiB at it", "MiB per image", "fixed GiB", "confirmed"], rows)
    results["memory"] = {"host_ram_bytes": ram, "fill": FILL, "rows": out}


def run_projection(results: dict) -> None:
    from ssl4eo_jax.bench.projection import grid_lines, projection_table
    from ssl4eo_jax.errors import ConfigError
    from ssl4eo_jax.progress import progress

    if FLAGS.model or FLAGS.patch_size:
        raise ConfigError("--model and --patch_size do not apply to --what=projection: the grid's cells take their "
                          "encoders from its methods' configs (and config.model, config.model_overrides).")
    config = _GRID.value
    dtype = FLAGS.dtype or "bfloat16"
    lines = grid_lines(config, dtype, progress=progress)
    pre = [line for line in lines if line.what.startswith("pre-train")]
    _print_table(f"Pre-training runs of configs/benchmark.py:{config.preset} ({dtype} FLOPs from XLA)",
                 ["run", "steps", "TFLOP/step", "PFLOP"],
                 [[line.what.removeprefix("pre-train "), line.steps, f"{line.flops_per_step / 1e12:.3f}",
                   f"{line.pflop:.1f}"] for line in pre])
    header, rows, total = projection_table(lines)
    evals = sum(line.pflop for line in lines if line not in pre)
    _print_table(f"The grid: {len(pre)} pre-trainings ({sum(line.pflop for line in pre):.0f} PFLOP) and "
                 f"{len(lines) - len(pre)} evaluations ({evals:.0f} PFLOP), {total:.0f} PFLOP in all", header, rows)
    results["projection"] = {"preset": config.preset, "dtype": dtype, "total_pflop": total, "rows": rows,
                             "lines": [vars(line) | {"pflop": line.pflop} for line in lines]}


if __name__ == "__main__":
    run_guarded(lambda: app.run(main, flags_parser=parse_flags))
