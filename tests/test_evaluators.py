"""Evaluation protocols: kNN, linear probes (ours and the reference's), fine-tuning, label fractions,
band mapping for transfer, and the eval configs on real checkpoints."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score

from ssl4eo_jax import evaluate, sharding, train
from ssl4eo_jax.checkpoint import IncompatibleCheckpointError
from ssl4eo_jax.data import load_manifest
from ssl4eo_jax.data.demo import generate
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.evaluators import linear_eval
from ssl4eo_jax.evaluators.features import Features, eval_preprocess
from ssl4eo_jax.evaluators.finetune import Task, train_classifier
from ssl4eo_jax.evaluators.fractions import SubsetSource, fraction_source, label_subset
from ssl4eo_jax.evaluators.knn import knn_scores
from ssl4eo_jax.evaluators.linear import classification_loss
from ssl4eo_jax.evaluators.metrics import per_batch_metrics
from ssl4eo_jax.evaluators.transfer import band_map, data_stats, resolve_band_map
from ssl4eo_jax.interop.normalisation import Normalisation
from ssl4eo_jax.methods.base import build_encoder
from ssl4eo_jax.presets.files import load_config_module
from ssl4eo_jax.presets.pretrain import apply_overrides
from ssl4eo_jax.report import read_metrics

from conftest import TINY_PATCH, TINY_SIZES, tiny_config

finetune_config, knn_config, linear_config = (load_config_module(f"eval/{name}") for name in ("finetune", "knn", "linear"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(demo_dir, tmp_path_factory) -> str:
    """A 4-step Barlow Twins run with a narrow ResNet-18 (width 16) on the 13-band demo data."""
    workdir = str(tmp_path_factory.mktemp("eval_run"))
    train.run(tiny_config(demo_dir, **{"eval.enabled": False, "model.width": 16}), workdir)
    return workdir


@pytest.fixture(scope="module")
def ben_dir(tmp_path_factory) -> str:
    """The 12-band (no B10), multi-label demo variant standing in for BigEarthNet."""
    out = str(tmp_path_factory.mktemp("data") / "demo_ben")
    return generate(out, TINY_SIZES, size=TINY_PATCH, seed=0, records_per_shard=40, progress=False, name="demo_ben")


def _eval_config(module, data_dir: str, checkpoint: str, **overrides):
    config = module.get_config("demo")
    config.checkpoint = checkpoint
    config.data.dir = data_dir
    config.eval.batch = 32
    config.eval.linear.epochs = 5
    config.train.batch = 32
    config.train.workers = 0
    config.train.steps = 4
    config.train.log_every = 1
    config.model.width = 16
    apply_overrides(config, overrides)
    return config


# --- kNN ------------------------------------------------------------------------------------------


def _knn_numpy(train_x, train_t, query, k, temperature):
    """Brute force: cosine similarities, the k most similar, exp(sim / T) weighted average of targets."""
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    out = []
    for sims in q @ a.T:
        top = np.argsort(-sims)[:k]
        w = np.exp(sims[top] / temperature)
        out.append((w[:, None] * train_t[top]).sum(0) / w.sum())
    return np.asarray(out)


@pytest.mark.parametrize("multi_label", [False, True])
def test_knn_matches_brute_force(multi_label):
    rng = np.random.default_rng(0)
    train_x, query = rng.normal(size=(300, 24)), rng.normal(size=(70, 24))
    if multi_label:
        targets = (rng.random((300, 6)) < 0.3).astype(np.float32)
    else:
        targets = np.eye(6, dtype=np.float32)[rng.integers(0, 6, 300)]
    got = knn_scores(train_x, targets, query, k=15, temperature=0.1, chunk=32)
    np.testing.assert_allclose(got, _knn_numpy(train_x, targets, query, 15, 0.1), rtol=1e-4, atol=1e-6)
    if not multi_label:  # a weighted vote: the scores of a query sum to 1
        np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)


# --- Linear probes --------------------------------------------------------------------------------


def _features(x, labels, k):
    return Features(x.astype(np.float32), labels.astype(np.int32), np.eye(k, dtype=np.float32)[labels])


def test_linear_probe_separates_separable_data_with_softmax_or_sigmoid():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(4, 16)) * 4

    def split(n):
        labels = rng.integers(0, 4, n)
        return _features(centres[labels] + rng.normal(size=(n, 16)), labels, 4)

    feats = {"train": split(400), "val": split(200), "test": split(200)}
    cfg = linear_config.get_config().eval.linear
    cfg.epochs = 30
    single = linear_eval(feats, False, 4, cfg)
    assert single["test"]["oa"] > 97 and single["val"]["oa"] > 97
    multi = linear_eval(feats, True, 4, cfg)
    assert set(multi["test"]) >= {"map_micro", "map_macro", "f1_micro", "f1_macro"}
    assert multi["test"]["map_macro"] > 97


def test_losses_are_pytorchs_cross_entropy_and_multilabel_soft_margin():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(16, 5)).astype(np.float32) * 3
    multi_hot = (rng.random((16, 5)) < 0.4).astype(np.float32)
    labels = rng.integers(0, 5, 16)
    ours_multi = float(classification_loss(jnp.asarray(logits), jnp.asarray(multi_hot), True))
    ref_multi = torch.nn.MultiLabelSoftMarginLoss()(torch.tensor(logits), torch.tensor(multi_hot)).item()
    assert ours_multi == pytest.approx(ref_multi, rel=1e-5)
    ours_single = float(classification_loss(jnp.asarray(logits), jax.nn.one_hot(labels, 5), False))
    ref_single = torch.nn.CrossEntropyLoss()(torch.tensor(logits), torch.tensor(labels)).item()
    assert ours_single == pytest.approx(ref_single, rel=1e-5)


def test_per_batch_metric_is_the_mean_of_per_batch_sklearn_scores():
    rng = np.random.default_rng(3)
    scores = rng.random((70, 5))
    multi_hot = (rng.random((70, 5)) < 0.3).astype(np.float32)
    labels = rng.integers(0, 5, 70)
    batches = [slice(i, i + 32) for i in range(0, 70, 32)]
    got = per_batch_metrics(scores, labels, multi_hot, True, 32)
    expected = np.mean([average_precision_score(multi_hot[b], scores[b], average="micro") for b in batches])
    assert got["map_micro"] == pytest.approx(100 * expected)
    got = per_batch_metrics(scores, labels, multi_hot, False, 32)
    expected = np.mean([accuracy_score(labels[b], scores[b].argmax(1)) for b in batches])
    assert got["oa"] == pytest.approx(100 * expected)


# --- Label fractions ------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.01, 0.001])
def test_fractions_are_exact_stratified_seeded_and_without_duplicates(fraction):
    rng = np.random.default_rng(4)
    labels = rng.choice(7, size=5000, p=[0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02])
    picked = label_subset(labels, fraction, seed=42)
    assert len(picked) == max(1, round(fraction * 5000))
    assert len(np.unique(picked)) == len(picked)
    counts = np.bincount(labels[picked], minlength=7)
    assert np.all(np.abs(counts - fraction * np.bincount(labels, minlength=7)) < 1.0 + 1e-9)
    np.testing.assert_array_equal(picked, label_subset(labels, fraction, seed=42))
    if fraction >= 0.01:
        assert not np.array_equal(picked, label_subset(labels, fraction, seed=43))
    multi = label_subset(labels, fraction, seed=42, multi_label=True)
    assert len(multi) == len(picked) and len(np.unique(multi)) == len(multi)


def test_fractions_with_replacement_are_the_references_sampling():
    labels = np.zeros(1000, np.int64)
    picked = label_subset(labels, 0.5, seed=42, with_replacement=True)
    assert len(picked) == 500 and len(np.unique(picked)) < 500  # duplicates, as the reference's rng.choice
    np.testing.assert_array_equal(np.sort(np.random.default_rng(42).choice(1000, 500)), picked)
    assert len(label_subset(labels, 1.0, seed=0, with_replacement=True)) == 1000


def test_fraction_source_reads_the_subset(demo_dir):
    source = SplitSource(load_manifest(demo_dir), "train")
    assert fraction_source(source, 1.0, 0, False) is source
    sub = fraction_source(source, 0.25, 0, False)
    assert isinstance(sub, SubsetSource) and len(sub) == 24
    assert sub[3]["id"] == source[int(sub.indices[3])]["id"]


# --- Band mapping ---------------------------------------------------------------------------------


def test_band_map_places_bands_by_name():
    mapping = band_map(["B1", "B02", "B10", "B8A"], ["B8A", "B01", "B02", "B11"])
    assert mapping.index == (1, 2, -1, 0)
    assert mapping.missing == ["B10"] and mapping.dropped == ["B11"]
    x = jnp.asarray(np.arange(2 * 4, dtype=np.float32).reshape(2, 4) + 1)  # data order B8A, B01, B02, B11
    np.testing.assert_array_equal(mapping.apply(x), [[2, 3, 0, 1], [6, 7, 0, 5]])
    # A fixed per-band normalisation of the encoder is looked up by name for the data's bands.
    norm = Normalisation("custom", (1.0, 2.0, 10.0, 8.0), (10.0, 20.0, 100.0, 80.0), "test")
    mean, std = data_stats(norm, mapping, np.zeros(4), np.ones(4))
    np.testing.assert_array_equal(mean, [8.0, 1.0, 2.0, 0.0])
    np.testing.assert_array_equal(std, [80.0, 10.0, 20.0, 1.0])
    with pytest.raises(ConfigError, match="does not say which"):
        resolve_band_map(None, 13, ["B02", "B03"], "The encoder")
    with pytest.raises(ConfigError, match="share no band"):
        band_map(["VV", "VH"], ["B02", "B03"])


def test_eval_preprocess_zero_fills_missing_bands_after_normalisation():
    rng = np.random.default_rng(5)
    images = rng.integers(100, 3000, size=(3, 8, 8, 3)).astype(np.uint16)  # data bands B04, B03, B02
    mean, std = np.array([1000.0, 900.0, 800.0], np.float32), np.array([300.0, 200.0, 100.0], np.float32)
    mapping = band_map(["B02", "B03", "B04", "B08"], ["B04", "B03", "B02"])
    got = np.asarray(eval_preprocess(mean, std, 1.0, 8, mapping.apply)(jnp.asarray(images)))
    normalised = (images - mean) / std
    expected = np.concatenate([normalised[..., ::-1], np.zeros((3, 8, 8, 1))], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_transfer_of_a_13_band_encoder_to_a_12_band_dataset(run_dir, ben_dir, tmp_path):
    config = _eval_config(linear_config, ben_dir, run_dir, **{"eval.label_fraction": 0.5})
    results = evaluate.run(config, str(tmp_path / "transfer"))
    assert results["band_map"]["zero_filled"] == ["B10"] and results["band_map"]["dropped"] == []
    assert results["multi_label"] and results["train_size"] == TINY_SIZES["train"] // 2
    for split in ("val", "test"):
        assert 0 < results["metrics"][split]["map_micro"] <= 100
    assert os.path.isfile(tmp_path / "transfer" / "results.md")


# --- Trained protocols ----------------------------------------------------------------------------


def _task(demo_dir, width=16, seed=0):
    manifest = load_manifest(demo_dir)
    encoder = build_encoder(tiny_config(demo_dir, **{"model.width": width}).model)
    variables = encoder.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 13)), train=False)
    mean, std = manifest.band_stats()
    return manifest, Task(encoder, dict(variables), manifest.num_classes, False, mean, std)


def test_finetuning_lowers_its_loss_and_resumes(demo_dir, tmp_path):
    """Fine-tuning runs in pre-training's loop (loop.TrainLoop): under the transfer guard at
    'disallow', with images/s in every record and in the summary, and exact resume."""
    manifest, task = _task(demo_dir)
    cfg = finetune_config.get_config("demo").train
    cfg.batch, cfg.workers, cfg.log_every, cfg.checkpoint_every, cfg.base_lr = 32, 0, 1, 4, 3.2
    cfg.steps = 12
    cfg.transfer_guard = "disallow"  # any implicit host<->device copy in the loop would fail
    mesh = sharding.make_mesh()
    source = SplitSource(manifest, "train")
    workdir = str(tmp_path / "ft")
    _, _, summary = train_classifier(task, cfg, source, mesh, workdir, {"steps": 12}, freeze_encoder=False)
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    losses = [r["loss"] for r in records]
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0] - 0.1
    assert summary["first_loss"] == losses[0] and summary["last_loss"] == losses[-1]
    assert records[0]["images_per_sec"] is None  # the first step is timed as compilation
    assert all(r["images_per_sec"] > 0 and r["lr"] > 0 for r in records[1:]) and summary["images_per_sec"] > 0
    cfg.steps = 14  # training longer in the same directory resumes from the checkpoint of step 12
    _, _, more = train_classifier(task, cfg, source, mesh, workdir, {"steps": 14}, freeze_encoder=False)
    assert more["resumed_from"] == 12 and more["steps"] == 14
    assert [r["step"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))] == list(range(1, 15))


def test_a_finetuning_workdir_refuses_another_encoder_batch_or_label_fraction(demo_dir, run_dir, tmp_path):
    """Resuming fine-tuning with another encoder checkpoint, batch or label fraction would mix two
    runs in one checkpoint: the run stops before training and names the keys."""
    workdir = str(tmp_path / "ft")
    base = {"train.steps": 2, "train.checkpoint_every": 1, "eval.linear.epochs": 1}
    evaluate.run(_eval_config(finetune_config, demo_dir, run_dir, **base), workdir)
    changes = {"checkpoint": ("random", "config.checkpoint"),
               "train.batch": (16, "config.train.batch: checkpoint has 32, this run has 16"),
               "eval.label_fraction": (0.5, "config.eval.label_fraction: checkpoint has 1.0, this run has 0.5")}
    for key, (value, named) in changes.items():
        config = _eval_config(finetune_config, demo_dir, run_dir, **base)
        apply_overrides(config, {key: value})
        with pytest.raises(IncompatibleCheckpointError, match=re.escape(named)):
            evaluate.run(config, workdir)
    more = _eval_config(finetune_config, demo_dir, run_dir, **{**base, "train.steps": 3})  # longer: resumes
    assert evaluate.run(more, workdir)["training"]["resumed_from"] == 2


def test_reference_probe_freezes_weights_but_updates_batchnorm(demo_dir, tmp_path):
    manifest, task = _task(demo_dir)
    cfg = linear_config.get_config("demo").train
    cfg.batch, cfg.workers, cfg.steps = 32, 0, 3
    encoder, head, _ = train_classifier(task, cfg, SplitSource(manifest, "train"), sharding.make_mesh(),
                                        str(tmp_path / "ref"), {}, freeze_encoder=True)
    for a, b in zip(jax.tree.leaves(encoder["params"]), jax.tree.leaves(task.variables["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(encoder["batch_stats"]),
                                                   jax.tree.leaves(task.variables["batch_stats"]))]
    assert all(moved)
    assert np.abs(head["kernel"]).max() > 0


# --- The eval configs on checkpoints --------------------------------------------------------------


def test_eval_configs_run_on_a_pretraining_run(run_dir, demo_dir, tmp_path):
    results = {}
    for name, module, overrides in [
        ("knn", knn_config, {}),
        ("linear", linear_config, {"eval.label_fraction": 0.5}),
        ("reference", linear_config, {"eval.protocol": "reference", "eval.per_batch_metric": True}),
        ("finetune", finetune_config, {"eval.label_fraction": 0.5, "eval.fraction_with_replacement": True}),
        ("supervised", finetune_config, {}),
    ]:
        checkpoint = "random" if name == "supervised" else run_dir
        config = _eval_config(module, demo_dir, checkpoint, **overrides)
        results[name] = evaluate.run(config, str(tmp_path / name))
        for split in ("val", "test"):
            assert 0 <= results[name]["metrics"][split]["oa"] <= 100
            assert 0 <= results[name]["metrics"][split]["aa"] <= 100
    assert results["linear"]["train_size"] == results["linear"]["train_distinct"] == 48
    assert results["finetune"]["train_size"] == 48 and results["finetune"]["train_distinct"] < 48
    assert results["reference"]["metric_averaging"] == "per batch of 32"
    assert results["supervised"]["training"]["steps"] == 4
    # A finished evaluation is not run again.
    again = evaluate.run(_eval_config(knn_config, demo_dir, run_dir), str(tmp_path / "knn"))
    assert again["wall_seconds"] == results["knn"]["wall_seconds"]


def test_eval_command_on_an_exported_weights_file(run_dir, demo_dir, tmp_path):
    """``python -m ssl4eo_jax.main --config=configs/eval/knn.py`` on a PyTorch-layout file gives the
    same kNN scores as on the run directory it was exported from."""
    from ssl4eo_jax.export import export_checkpoint

    weights = str(tmp_path / "encoder.safetensors")
    export_checkpoint(run_dir, weights, "timm")
    scores = {}
    for name, checkpoint in (("run", run_dir), ("file", weights)):
        workdir = str(tmp_path / name)
        subprocess.run([sys.executable, "-m", "ssl4eo_jax.main", "--config=configs/eval/knn.py",
                        f"--config.checkpoint={checkpoint}", f"--config.data.dir={demo_dir}", "--config.eval.batch=32",
                        f"--workdir={workdir}"], cwd=ROOT, check=True, capture_output=True)
        with open(os.path.join(workdir, "results.json")) as f:
            scores[name] = json.load(f)["metrics"]
    assert scores["file"]["test"]["oa"] == pytest.approx(scores["run"]["test"]["oa"])
    assert scores["file"]["val"]["aa"] == pytest.approx(scores["run"]["val"]["aa"])
