"""The training loop: device-count invariance, the whole job in miniature, resume and its guards."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest
from test_tensorboard import check_events

from ssl4eo_jax import sharding, train
from ssl4eo_jax.checkpoint import IncompatibleCheckpointError
from ssl4eo_jax.data import load_manifest, pipeline
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.methods import get_method
from ssl4eo_jax.optim import make_optimizer
from ssl4eo_jax.report import read_metrics

from conftest import tiny_config


def _losses_on(devices, config, manifest, steps=3):
    method = get_method(config)
    src = SplitSource(manifest, "train")
    spe = pipeline.steps_per_epoch(src, config.data.global_batch)
    tx, lr_fn = make_optimizer(config.optim, spe, 10)
    mesh = sharding.make_mesh(devices)
    mean, std = manifest.band_stats()
    state = train.init_state(method, tx, config, manifest.num_bands, mesh)
    step_fn = train.make_train_step(method, tx, lr_fn, config, mean, std, mesh)
    it = pipeline.DeviceIterator(pipeline.train_dataset(src, config.data.global_batch, config.seed), mesh, workers=0)
    losses = []
    for _ in range(steps):
        state, metrics = step_fn(state, next(it))
        losses.append(float(metrics["loss"]))
    it.close()
    return losses, jax.tree.map(np.asarray, state["params"])


def test_whole_job_writes_results_and_resumes(demo_dir, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    config = tiny_config(demo_dir, **{"train.profile_steps": "2,3"})
    results = train.run(config, workdir)
    printed = capsys.readouterr().out
    assert "| method | kNN (OA %) | linear (OA %) | random-init kNN | random-init linear |" in printed
    assert f"tensorboard --logdir {os.path.abspath(workdir)}" in printed  # the one-screen end summary
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert saved["steps"] == 4 and saved["resumed_from"] == 0 and saved["devices"] == 8
    for which in ("pretrained", "random_init"):
        for protocol in ("knn", "linear"):
            for split in ("val", "test"):
                assert 0.0 <= saved[which][protocol][split]["oa"] <= 100.0
    assert saved["pretrained"]["knn"]["test"]["oa"] == pytest.approx(results["pretrained"]["knn"]["test"]["oa"])
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["images_per_sec"] > 0 for r in records[1:])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    # One BN protocol for both encoders, said in results.json.
    assert saved["eval_bn"].startswith("re-estimated on clean train images")
    # config.train.profile_steps: a jax.profiler trace of steps 2-3.
    assert glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))

    # Determinism: the same job again gives identical losses and evaluation metrics.
    again = train.run(tiny_config(demo_dir), str(tmp_path / "again"))
    assert [r["loss"] for r in read_metrics(os.path.join(tmp_path, "again", "metrics.jsonl"))] == \
        [r["loss"] for r in records]
    for which in ("pretrained", "random_init"):
        for protocol in ("knn", "linear"):
            assert again[which][protocol]["test"] == results[which][protocol]["test"]

    # Training longer with the same workdir resumes from the last complete checkpoint: here step 2, as
    # if the run had been killed while writing checkpoint 4 (steps 3-4 are logged again).
    shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))
    results = train.run(tiny_config(demo_dir, **{"train.steps": 6}), workdir)
    assert results["resumed_from"] == 2 and results["steps"] == 6
    relogged = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in relogged] == [1, 2, 3, 4, 5, 6]
    check_events(workdir, relogged, results=results)

    # A checkpoint of a different model is refused with the differing keys named.
    other = tiny_config(demo_dir, **{"barlow.projector": (32, 32, 32), "eval.enabled": False})
    with pytest.raises(IncompatibleCheckpointError, match=r"config.barlow.projector: checkpoint has \[64, 64, 64\]"):
        train.run(other, workdir)


def test_unknown_method_is_named(demo_dir):
    config = tiny_config(demo_dir, method="dino2")
    with pytest.raises(ValueError, match="Unknown method 'dino2'.*available: barlow"):
        get_method(config)


def test_the_loop_makes_no_implicit_transfers(demo_dir, tmp_path):
    """With the transfer guard at 'disallow', any accidental host<->device copy in the loop fails."""
    config = tiny_config(demo_dir, **{"train.transfer_guard": "disallow", "eval.enabled": False,
                                      "train.steps": 3, "train.checkpoint_every": 2, "train.tensorboard": False})
    results = train.run(config, str(tmp_path / "guarded"))
    assert results["steps"] == 3 and np.isfinite(results["final_metrics"]["loss"])
    assert not glob.glob(str(tmp_path / "guarded" / "events.out.tfevents.*"))  # config.train.tensorboard=False


def test_bfloat16_compute_keeps_float32_state_and_tracks_float32(demo_dir):
    """Mixed precision forced on the CPU: finite losses within 5 % of float32 over the first steps
    (measured: 0.1 %, 3.6 %, 1.0 % at steps 1-3; later steps drift apart as any perturbation of this
    tiny model does), float32 parameters."""
    manifest = load_manifest(demo_dir)
    f32, _ = _losses_on(jax.devices(), tiny_config(demo_dir, **{"model.dtype": "float32"}), manifest, steps=6)
    bf16, params = _losses_on(jax.devices(), tiny_config(demo_dir, **{"model.dtype": "bfloat16"}), manifest, steps=6)
    assert np.all(np.isfinite(bf16))
    np.testing.assert_allclose(bf16[:3], f32[:3], rtol=0.05)
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
    method = get_method(tiny_config(demo_dir, **{"model.dtype": "bfloat16"}))
    assert method.encoder.dtype == jax.numpy.bfloat16
    assert get_method(tiny_config(demo_dir)).encoder.dtype == jax.numpy.float32  # "auto" on a CPU


def _multidate_dataset(root: str) -> str:
    """A tiny dataset whose records hold 3 dates (T, H, W, C), as SSL4EO-S12's converter writes."""
    from ssl4eo_jax.data import demo
    from ssl4eo_jax.data.manifest import write_manifest
    from ssl4eo_jax.data.records import encode_record
    from ssl4eo_jax.data.writer import PatchRecord, band_stats_entry, write_split

    def record(split_seed: int, index: int) -> PatchRecord:
        rng = np.random.default_rng([split_seed, index])
        dates = np.stack([demo.make_patch(rng, 36)[0] for _ in range(3)])
        return PatchRecord(encode_record(dates, f"loc_{split_seed}_{index}", label=index % 10), f"loc_{index}", dates)

    splits, stats = {}, None
    for code, (split, count) in enumerate({"train": 64, "val": 32}.items()):
        summary = write_split(root, split, count, lambda i, c=code: record(c, i), records_per_shard=64, progress=False)
        splits[split] = summary.manifest_entry()
        stats = stats or summary.stats
    write_manifest(root, {
        "dataset": "multidate", "source": "test", "converter": "test", "converter_version": "1",
        "bands": list(demo.BANDS), "dtype": "uint16", "shape": [3, 36, 36, 13], "time_axis": 0,
        "band_stats": band_stats_entry(stats), "classes": list(demo.CLASSES), "multi_label": False,
        "label_kinds": ["single"], "splits": splits,
    })
    return root


def test_records_with_several_dates_train_on_two_seasons_and_evaluate(tmp_path):
    data = _multidate_dataset(str(tmp_path / "multidate"))
    config = tiny_config(data, **{"data.name": "custom", "train.steps": 2, "eval.linear.epochs": 2})
    results = train.run(config, str(tmp_path / "run"))
    assert results["steps"] == 2 and np.isfinite(results["final_metrics"]["loss"])
    assert 0 <= results["pretrained"]["knn"]["val"]["oa"] <= 100
