"""``bench --what=suite`` at a tiny size, so that the accelerator suite never rots (issue 15)."""

import json

import jax
import pytest

from ssl4eo_jax.bench import fixtures, suite


def test_suite_measures_every_figure_at_a_tiny_size(tmp_path):
    shards = fixtures.write_shards(str(tmp_path / "shards"), 32, 36)
    small = {"model.width": 8, "barlow.projector": (32, 32, 32)}  # a toy model: the suite, not the speed
    kept = []
    out = suite.run_suite(["barlow"], 8, 36, 32, shards, workers=0, dtype="float32", iters=1, torch_reference=False,
                          overrides=small, on_rows=lambda rows: kept.append(list(rows)))
    assert kept == [out["rows"]]  # each method's rows are handed over as soon as they are measured
    (row,) = out["rows"]  # a CPU reports no memory limit: no largest-batch row
    assert row["method"] == "barlow" and row["batch"] == 8 and not row["largest"]
    assert row["images_per_sec"] > 0 and row["e2e_images_per_sec"] > 0 and row["compile_seconds"] > 0
    assert row["peak_device_gib"] is None and row["peak_host_rss_gib"] > 0.1
    # XLA's FLOPs of the compiled step, per device (it counts the partitioned program): two 32 px views
    # of 8 images through the width-8 ResNet-18 forward and backward: more than 2 x 8 x 2.5 forward
    # passes (the encoder's forward, from the projection's count) in all, less than 2 x 8 x 6 with the
    # work every device repeats (the heads' update, the cross-correlation).
    from ml_collections import ConfigDict

    from ssl4eo_jax.bench.projection import encoder_forward_flops

    forward = encoder_forward_flops(ConfigDict({"name": "resnet18", "stem": "imagenet", "width": 8}), 32, 13, "float32")
    total = row["flops_per_step"] * jax.device_count()
    assert 2 * 8 * 2.5 * forward < total < 2 * 8 * 6 * forward, (total, forward)
    assert row["tflops_achieved"] == pytest.approx(row["flops_per_step"] / (row["step_ms"] / 1e3) / 1e12)
    table = suite.suite_table(out)
    header, _, values = table.splitlines()[:3]
    assert [c.strip() for c in header.strip("|").split("|")] == suite.HEADER
    cells = [c.strip() for c in values.strip("|").split("|")]
    assert cells[:4] == ["barlow", "resnet18", "8", "float32"]
    assert float(cells[5]) == pytest.approx(row["images_per_sec"], abs=0.06)
    json.dumps(out)  # the --out file


def test_a_step_that_would_not_fit_in_host_ram_is_reported_not_run(tmp_path):
    shards = fixtures.write_shards(str(tmp_path / "shards"), 16, 36)
    small = {"model.width": 8, "barlow.projector": (32, 32, 32)}
    out = suite.run_suite(["barlow"], 8, 36, 32, shards, workers=0, dtype="float32", iters=1, torch_reference=False,
                          overrides=small, host_ram_bytes=2**20)  # 1 MiB of RAM
    (row,) = out["rows"]
    assert row["method"] == "barlow" and row["batch"] == 8 and "images_per_sec" not in row
    assert row["error"].startswith("needs about ") and "GiB of host RAM" in row["error"] and "--batch" in row["error"]
    assert "failed: needs about" in suite.suite_table(out)


def test_largest_batch_fills_nine_tenths_of_device_memory():
    measured = {"batch": 256, "peak_device_gib": 10.0, "device_limit_gib": 80.0}
    assert suite.largest_batch(measured, devices=1) == 1824  # 0.9 x 8 x 256 = 1843, down to a multiple of 32
    assert suite.largest_batch(measured, devices=8) == 1792  # a multiple of 32 x 8
    assert suite.largest_batch({"batch": 64, "peak_device_gib": None, "device_limit_gib": None}, 1) is None


def test_suite_table_appends_to_the_docs_with_the_device(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n")
    machine = {"device": "NVIDIA H200", "device_count": 1, "platform": "gpu", "jax": "0.10.2", "host_cpus": 16}
    suite.append_to_docs(str(docs), machine, "python -m ssl4eo_jax.bench --what=suite", "| a |")
    text = docs.read_text()
    assert "### Suite on NVIDIA H200 x1 (gpu, jax 0.10.2, 16 host CPUs)" in text
    assert "`python -m ssl4eo_jax.bench --what=suite`\n\n| a |" in text
