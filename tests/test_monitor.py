"""The collapse monitor: the detector, the best-checkpoint selection and resume, and a whole run
that collapses, stops and evaluates its best checkpoint."""

from __future__ import annotations

import json
import logging
import math
import os

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ssl4eo_jax import sharding, train
from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.data import load_manifest
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.evaluators import frozen_encoder
from ssl4eo_jax.methods import get_method
from ssl4eo_jax.monitor import CollapseDetector, TrainingMonitor, training_evaluators
from ssl4eo_jax.report import read_metrics

from conftest import tiny_config


def _log(value: float) -> dict[str, float]:
    return {"embedding_std": value / 8, "embedding_std_rel": value, "effective_rank": 3.0}


def test_collapse_fires_after_patience_consecutive_logs_and_recovery_resets():
    det = CollapseDetector(threshold=0.1, patience=3)
    events = [det.update(step, _log(v)) for step, v in enumerate([0.5, 0.05, 0.04, 0.5, 0.05, 0.02, 0.01, 0.0, 0.3])]
    # 0.05, 0.04 then a healthy log: no alarm; three lows in a row (steps 4-6) fire once, at step 6.
    assert events == [None, None, None, None, None, None, "collapse", None, "recovered"]
    summary = det.summary()
    assert summary["detected"] and summary["first_step"] == 6 and not summary["collapsed_at_end"]
    assert summary["events"][0] == {"event": "collapse", "step": 6, "embedding_std": 0.01 / 8,
                                    "embedding_std_rel": 0.01, "effective_rank": 3.0}
    assert summary["events"][1]["event"] == "recovered" and summary["events"][1]["step"] == 8
    nan = CollapseDetector(0.1, 2)
    assert [nan.update(s, _log(float("nan"))) for s in range(2)] == [None, "collapse"]  # NaN counts as collapsed
    resumed = CollapseDetector(0.1, 3)
    resumed.load(json.loads(json.dumps(det.state())))
    assert resumed.state() == det.state()
    assert not CollapseDetector(0.1, 1).summary()["detected"]


class _Iterator:
    def get_state(self) -> bytes:
        return b"{}"


def _monitor(demo_dir: str, workdir: str, scores: list[float]) -> TrainingMonitor:
    config = tiny_config(demo_dir, **{"evals.knn.every": 2})
    manifest = load_manifest(demo_dir)
    sources = {s: SplitSource(manifest, s) for s in ("train", "val")}
    mean, std = manifest.band_stats()
    method = get_method(config)
    frozen = frozen_encoder(method.encoder, sharding.make_mesh(), config.eval, mean, std)
    monitor = TrainingMonitor(config, workdir, frozen, sources, steps_per_epoch=3.0)
    scripted = iter(scores)
    # the kNN scores this test scripts, in the evaluator's output layout
    monitor.evaluators["knn"].run = lambda variables: {"knn": {"val": {"primary": next(scripted)}}}
    return monitor


def _state(step: int) -> dict:
    return {"step": jnp.asarray(step), "params": {"encoder": {"w": jnp.full((3,), float(step))}},
            "batch_stats": {"encoder": {}}}


def test_best_checkpoint_is_kept_beside_the_latest_and_resumes(demo_dir, tmp_path):
    workdir = str(tmp_path)
    monitor = _monitor(demo_dir, workdir, [50.0, 70.0, 60.0, 80.0, 75.0])
    infos = {}
    for step in (2, 4, 6, 8, 10):
        assert monitor.sync_due(step, 10)  # every 2 steps: the loop reads this log point now
        record = monitor.observe(step, _log(0.5), _state(step), _Iterator(), {"method": "barlow"}, sync=True)
        assert "knn_monitor" in record
        infos[step] = json.loads(json.dumps(monitor.checkpoint_info()))
    monitor.best.wait()
    assert monitor.best.steps() == [8] and monitor.best_step == 8 and monitor.best_score == 80.0
    restored, step = monitor.best_state(_state(0))
    assert step == 8 and float(restored["params"]["encoder"]["w"][0]) == 8.0
    assert monitor.summary()["knn_monitor"]["history"][2] == {"step": 6, "oa": 60.0}
    monitor.close()

    # A run resumed from step 6: the best of its past (70 at step 4) counts, step 8's file goes.
    again = _monitor(demo_dir, workdir, [65.0, 90.0])
    again.restore(infos[6], 6)
    assert again.best.steps() == [] and again.best_score == 70.0 and again.best_step == 4
    for step in (8, 10):  # 65 < 70: not kept; 90 is
        assert again.sync_due(step, 10) and not again.sync_due(step + 1, 10)
        again.sync_due(step, 10)
        again.observe(step, _log(0.5), _state(step), _Iterator(), {}, sync=True)
    again.best.wait()
    assert again.best.steps() == [10] and again.best_score == 90.0
    again.close()


def test_an_unknown_evaluator_is_one_line_naming_it(demo_dir):
    config = tiny_config(demo_dir)
    config.evals.knnn = ml_collections.ConfigDict({"every": 5, "bank": 10, "queries": 10})
    manifest = load_manifest(demo_dir)
    sources = {s: SplitSource(manifest, s) for s in ("train", "val")}
    with pytest.raises(ConfigError, match=r"config.evals.knnn: no such evaluator; the evaluators are knn, linear"):
        training_evaluators(config, None, sources)


def test_best_checkpoints_are_chosen_by_orbax_on_the_metric_not_the_step(tmp_path):
    """``Checkpointer(best_metric=...)`` hands the choice to orbax's best-checkpoint options: of
    scores 50, 80, 60, 55 at steps 2, 4, 6, 8 with two kept, the best two (4 and 6) stay, not the
    latest two (6 and 8)."""
    ckpt = Checkpointer(str(tmp_path), keep=2, subdir="best", best_metric="knn_monitor", async_save=False)
    for step, score in [(2, 50.0), (4, 80.0), (6, 60.0), (8, 55.0)]:
        ckpt.save(step, _state(step), _Iterator(), {}, metrics={"knn_monitor": score})
    ckpt.wait()
    assert ckpt.steps() == [4, 6] and ckpt.best_step() == 4
    ckpt.drop_after(4)
    assert ckpt.steps() == [4]
    ckpt.close()


def test_run_that_collapses_stops_and_evaluates_its_best_checkpoint(demo_dir, tmp_path, caplog):
    """A threshold no embedding meets makes every log point "collapsed": with patience 2 and
    stop_on_collapse the run stops at step 2 of 6, says so, and evaluates the best-kNN checkpoint.
    The linear-probe evaluator runs beside the kNN one, on its own schedule."""
    workdir = str(tmp_path / "run")
    config = tiny_config(demo_dir, **{"train.steps": 6, "evals.knn.every": 2, "evals.linear.every": 1,
                                      "evals.linear.bank": 64, "evals.linear.queries": 32, "monitor.std_threshold": 1e9,
                                      "monitor.patience": 2, "monitor.start_epoch": 0.0,
                                      "monitor.stop_on_collapse": True, "eval.use_best": True})
    with caplog.at_level(logging.WARNING):
        results = train.run(config, workdir)
    assert "COLLAPSE" in caplog.text and "Stopping" in caplog.text
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert saved["stopped_on_collapse"] and saved["steps"] == 2
    assert saved["collapse"]["detected"] and saved["collapse"]["first_step"] == 2
    assert saved["knn_monitor"]["best_step"] == 2 and 0 <= saved["knn_monitor"]["best_score"] <= 100
    assert saved["evaluated_checkpoint"] == {"which": "best", "step": 2}
    assert results["pretrained"]["knn"]["test"]["oa"] >= 0
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["collapse"] and records[1]["stop"]  # the record that ends the run
    assert "knn_monitor" in records[1] and "knn_monitor" not in records[0]
    assert all(0 <= r["linear_monitor"] <= 100 for r in records)
    linear = saved["linear_monitor"]
    assert [h["step"] for h in linear["history"]] == [1, 2] and "best_step" not in linear
    assert all(math.isfinite(r["effective_rank"]) and r["embedding_std"] > 0 for r in records)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints_best"))) == ["2"]
    assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))
    np.testing.assert_allclose(saved["final_metrics"]["embedding_std_rel"], records[1]["embedding_std_rel"])


def test_log_points_before_the_start_epoch_do_not_count(demo_dir, tmp_path):
    monitor = _monitor(demo_dir, str(tmp_path), [])  # start_epoch 1 x 3 steps per epoch: from step 3
    low = _log(0.0)
    assert [monitor.observe(s, low, None, None, {}, sync=False) for s in (1, 2, 3, 4, 5, 6)] == [{}] * 6
    # 5 logs from step 3; no "stop" in the record: stop_on_collapse is off
    assert monitor.observe(7, low, None, None, {}, sync=False) == {"collapse": True}
    assert monitor.summary()["collapse"]["first_step"] == 7
    monitor.close()
