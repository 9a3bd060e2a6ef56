"""The whole user path on real imagery (issue 13): convert the real BigEarthNet v1 and EuroSAT-MS
samples of ../shared/realdata with the converters' command lines, verify them, pre-train 2 steps,
evaluate with kNN and export to safetensors. Skipped, with the reason, when the samples are absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from prep_helpers import REALDATA, needs_realdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (args, proc.stderr[-3000:])
    return proc


@needs_realdata
def test_real_samples_convert_pretrain_evaluate_and_export(tmp_path):
    ben, eurosat = str(tmp_path / "ben"), str(tmp_path / "eurosat")
    _run("data_prep.bigearthnet", "--version=1", "--src",
         os.path.join(REALDATA, "bigearthnet_s2_v1_example", "BigEarthNet-S2-Example"),
         "--splits", os.path.join(REALDATA, "metadata", "bigearthnet_v1"), "--allow-partial", "--out", ben,
         "--workers=1", "--no-progress")
    _run("data_prep.eurosat", "--src", os.path.join(REALDATA, "eurosat_ms_rico3"), "--out", eurosat,
         "--split-fractions", "1,0,0", "--workers=1", "--no-progress")
    for data, size in ((ben, {"train": 4, "test": 1}), (eurosat, {"train": 3})):
        with open(os.path.join(data, "manifest.json")) as f:
            manifest = json.load(f)
        assert {s: e["size"] for s, e in manifest["splits"].items()} == size
        assert all(len(e["shard_info"]) == len(e["shards"]) for e in manifest["splits"].values())
        assert "OK" in _run("data_prep.verify", data, "--full", "--no-progress").stdout

    run = str(tmp_path / "pretrain")
    _run("ssl4eo_jax.main", "--config=configs/barlow.py:bigearthnet", f"--workdir={run}", f"--config.data.dir={ben}",
         "--config.data.global_batch=4", "--config.data.workers=0", "--config.train.steps=2",
         "--config.train.log_every=1", "--config.model.width=8", "--config.barlow.projector=(32,32,32)",
         "--config.eval.enabled=False", "--config.monitor.enabled=False", "--config.evals.knn.every=0")
    with open(os.path.join(run, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f]
    assert len(losses) == 2 and np.all(np.isfinite(losses))

    knn = str(tmp_path / "knn")
    _run("ssl4eo_jax.main", "--config=configs/eval/knn.py:bigearthnet", f"--config.checkpoint={run}",
         f"--config.data.dir={ben}", "--config.eval.batch=4", f"--workdir={knn}")
    with open(os.path.join(knn, "results.json")) as f:
        metrics = json.load(f)["metrics"]["test"]
    assert metrics and all(np.isfinite(v) and 0 <= v <= 100 for v in metrics.values() if isinstance(v, float))

    weights = str(tmp_path / "encoder.safetensors")
    _run("ssl4eo_jax.export", f"--checkpoint={run}", f"--to={weights}")
    from safetensors.numpy import load_file

    tensors = load_file(weights)
    assert tensors["conv1.weight"].shape == (8, 12, 7, 7)  # width 8, the 12 bands of BigEarthNet-S2
    assert all(np.all(np.isfinite(t)) for t in tensors.values())
