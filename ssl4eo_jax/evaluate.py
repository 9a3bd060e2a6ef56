"""One evaluation of one encoder on one dataset: ``config.task`` is ``knn``, ``linear`` or ``finetune``
(configs in ``configs/eval/``). Read top to bottom: target data, encoder and band mapping, label
fraction, protocol, results.

The encoder is a ResNet or a ViT; a ViT's pooling (class token or mean of the patch tokens) is the
encoder's own unless ``config.eval.pool`` overrides it (``evaluators/encoders.py``).

Writes ``results.json`` (metrics of the val and test splits, the band mapping, the pooling, the
training subset, the config) and ``results.md`` into the work directory. Re-running with the same
config returns the finished results without work; an unfinished fine-tuning resumes from its
checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ssl4eo_jax import rng, sharding
from ssl4eo_jax.data.datasets import load_dataset_manifest
from ssl4eo_jax.data.manifest import DatasetError, Manifest
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.evaluators import FrozenEvaluator, frozen_encoder, recompute_bn, split_features, split_metrics
from ssl4eo_jax.evaluators.encoders import Encoder as EncoderModule
from ssl4eo_jax.evaluators.encoders import pooling, with_pool
from ssl4eo_jax.evaluators.finetune import Task, train_classifier
from ssl4eo_jax.evaluators.fractions import fraction_source
from ssl4eo_jax.evaluators.linear import head_scores
from ssl4eo_jax.evaluators.transfer import BandMap, band_map, data_stats, resolve_band_map
from ssl4eo_jax.methods.base import build_encoder, init_encoder
from ssl4eo_jax.report import format_table, write_json

TASKS = ("knn", "linear", "finetune")
RANDOM = "random"


@dataclasses.dataclass
class Encoder:
    """The encoder to evaluate, with the input mapping of the target data onto it."""

    module: EncoderModule
    variables: dict[str, Any]
    bands: BandMap
    mean: np.ndarray  # per data band
    std: np.ndarray
    random: bool
    normalisation: dict[str, Any]


def load_target_encoder(config: ml_collections.ConfigDict, manifest: Manifest) -> Encoder:
    """``config.checkpoint`` (run dir, weights file or ``random``) with its bands mapped onto ``manifest``'s,
    pooling as ``config.eval.pool`` says (unset: the encoder's own)."""
    enc = _load_encoder(config, manifest)
    return dataclasses.replace(enc, module=with_pool(enc.module, config.eval.get("pool")))


def _load_encoder(config: ml_collections.ConfigDict, manifest: Manifest) -> Encoder:
    path = config.get("checkpoint")
    if not path:
        raise ConfigError("config.checkpoint is required: a run directory, a PyTorch weights file, or 'random' "
                          "for a randomly initialised config.model.")
    mean, std = manifest.band_stats()
    if path == RANDOM:
        module = build_encoder(config.model)
        size = config.train.aug.crop_size
        images = np.zeros((2, size, size, manifest.num_bands), np.float32)
        # The same weights as pre-training's random-init baseline for this seed and model.
        variables = jax.jit(lambda: init_encoder(module, rng.stream(config.seed, "init"), images))()
        return Encoder(module, variables, band_map(manifest.bands, manifest.bands), mean, std, True,
                       {"preset": "dataset", "source": "the target dataset's band statistics"})
    from ssl4eo_jax.interop import load_encoder  # imports torch lazily where a file needs it

    if not os.path.exists(path):
        raise ConfigError(f"config.checkpoint {path} does not exist.")
    loaded = load_encoder(path, normalisation=config.get("normalisation"))
    names = tuple(config.get("encoder_bands") or ()) or loaded.bands
    mapping = resolve_band_map(names, loaded.num_bands, manifest.bands, f"The encoder in {path}")
    mean, std = data_stats(loaded.normalisation, mapping, mean, std)
    module = build_encoder(ml_collections.ConfigDict(loaded.model_cfg))
    return Encoder(module, loaded.variables, mapping, mean, std, False, loaded.normalisation.to_dict())


def finished_results(workdir: str, config_dict: dict[str, Any]) -> dict[str, Any] | None:
    """The results of an earlier run of the same config in ``workdir``, if it finished."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if saved.get("config") == json.loads(json.dumps(config_dict)) else None


def _protocol(config: ml_collections.ConfigDict) -> str:
    if config.task not in TASKS:
        raise ConfigError(f"Unknown evaluation task {config.task!r}; choose one of {', '.join(TASKS)}.")
    if config.task == "linear":
        if config.eval.protocol not in ("ours", "reference"):
            raise ConfigError(f"config.eval.protocol is {config.eval.protocol!r}; choose 'ours' or 'reference'.")
        return "linear" if config.eval.protocol == "ours" else "linear_reference"
    return config.task


def run(config: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
    """Runs the evaluation of ``config`` and writes its results into ``workdir``; returns them."""
    began = time.time()
    config_dict = config.to_dict()
    done = finished_results(workdir, config_dict)
    if done is not None:
        logging.info("%s already holds the results of this config; nothing to do.", workdir)
        return done
    os.makedirs(workdir, exist_ok=True)
    protocol = _protocol(config)
    ev = config.eval

    # Target data.
    mesh = sharding.make_mesh()
    sharding.check_batch_size(ev.batch, mesh, "config.eval.batch")
    sharding.check_batch_size(config.train.batch, mesh, "config.train.batch")
    manifest = load_dataset_manifest(config.data)
    sources: dict[str, Any] = {s: SplitSource(manifest, s) for s in ("train", "val", "test") if s in manifest.splits}
    if "train" not in sources or len(sources) < 2:
        raise DatasetError(f"{manifest.root} needs a train split and a val or test split; it has {sorted(sources)}.")
    multi_label = manifest.multi_label if ev.get("multi_label") is None else bool(ev.multi_label)
    k = manifest.num_classes

    # Encoder, band mapping and the label fraction of the training split.
    enc = load_target_encoder(config, manifest)
    full_train = sources["train"]
    sources["train"] = fraction_source(full_train, ev.label_fraction, ev.fraction_seed, multi_label,
                                       ev.fraction_with_replacement)
    subset = getattr(sources["train"], "indices", np.arange(len(full_train)))
    logging.info("%s of %s on %s: %d of %d training patches (%.3g %%, %d distinct)", protocol, config.checkpoint,
                 manifest.dataset, len(subset), len(full_train), 100 * ev.label_fraction, len(np.unique(subset)))
    per_batch = ev.batch if ev.per_batch_metric else 0
    bands = None if enc.bands.identity else enc.bands.apply
    frozen = frozen_encoder(enc.module, mesh, ev, enc.mean, enc.std, bands)
    name = f"{protocol} {os.path.basename(str(config.checkpoint).rstrip('/'))}"

    # Protocol.
    summary: dict[str, Any] = {}
    if protocol in ("knn", "linear"):  # the evaluator of pre-training's end-of-run evaluation
        out = FrozenEvaluator(name, frozen, sources, ev, (protocol,), recompute_bn(ev), per_batch,
                              progress=progress).run(enc.variables)
        metrics = out[protocol]
        summary["feature_dim"] = out["feature_dim"]
    else:
        task = Task(enc.module, enc.variables, k, multi_label, enc.mean, enc.std, bands)
        variables, head, summary = train_classifier(task, config.train, sources["train"], mesh, workdir, config_dict,
                                                    freeze_encoder=protocol == "linear_reference", desc=name)
        evals = {s: src for s, src in sources.items() if s != "train"}
        feats = split_features(frozen, variables, evals, name, progress=progress)
        metrics = {s: split_metrics(np.asarray(head_scores(f.x @ head["kernel"] + head["bias"], multi_label)), f,
                                    multi_label, per_batch) for s, f in feats.items()}

    results = {
        "task": config.task, "protocol": protocol, "checkpoint": config.checkpoint, "dataset": manifest.dataset,
        "data_dir": manifest.root, "multi_label": multi_label,
        "label_fraction": ev.label_fraction, "with_replacement": ev.fraction_with_replacement,
        "train_size": int(len(subset)), "train_distinct": int(len(np.unique(subset))),
        "metric_averaging": f"per batch of {per_batch}" if per_batch else "whole split",
        "band_map": enc.bands.describe(), "normalisation": enc.normalisation, "pool": pooling(enc.module),
        "metrics": metrics,
        "training": summary, "wall_seconds": time.time() - began, "config": config_dict,
    }
    if jax.process_index() == 0:
        write_json(os.path.join(workdir, "results.json"), results)
        table = results_table(results)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(f"# {protocol} of {config.checkpoint} on {manifest.dataset} "
                    f"({100 * ev.label_fraction:g} % labels)\n\n{table}\n")
        print(f"\n{protocol} on {manifest.dataset}:\n{table}\nResults in {os.path.abspath(workdir)}")
    return results


def results_table(results: dict[str, Any]) -> str:
    """split | every metric of the split, in percent."""
    splits = [s for s, m in results["metrics"].items() if isinstance(m, dict) and "primary" in m]
    keys = [k for k in results["metrics"][splits[0]] if k != "primary"]
    return format_table(["split", *keys], [[s, *(results["metrics"][s][k] for k in keys)] for s in splits])
