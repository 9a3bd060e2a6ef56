"""Evaluation of frozen encoders: kNN and linear probe on the validation and test splits."""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import numpy as np

from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.evaluators.features import Features, FrozenEncoder, eval_preprocess
from ssl4eo_jax.evaluators.knn import knn_scores
from ssl4eo_jax.evaluators.linear import train_linear_probe
from ssl4eo_jax.evaluators.metrics import classification_metrics
from ssl4eo_jax.models.resnet import ResNet

__all__ = ["FrozenEncoder", "evaluate_frozen", "eval_preprocess", "frozen_encoder"]


def _targets(features: Features, multi_label: bool, num_classes: int) -> np.ndarray:
    if multi_label:
        return features.multi_hot
    return np.eye(num_classes, dtype=np.float32)[features.label]


def frozen_encoder(encoder: ResNet, mesh: jax.sharding.Mesh, eval_cfg: Any, mean: np.ndarray, std: np.ndarray
                   ) -> FrozenEncoder:
    """The compiled feature extractor of ``config.eval`` for an encoder architecture."""
    return FrozenEncoder(encoder, eval_preprocess(mean, std, eval_cfg.crop_fraction, eval_cfg.size), mesh,
                         eval_cfg.batch)


def evaluate_frozen(
    frozen: FrozenEncoder, variables: dict[str, Any], sources: dict[str, SplitSource], eval_cfg: Any,
    name: str, recompute_bn: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """kNN and linear-probe metrics of one encoder on every split in ``sources`` but ``train``."""
    began = time.time()
    manifest = sources["train"].manifest
    multi_label = manifest.multi_label if eval_cfg.get("multi_label") is None else bool(eval_cfg.multi_label)
    if recompute_bn:
        variables = frozen.recompute_batch_stats(variables, sources["train"])
    feats = {split: frozen.features(variables, src, desc=f"{name} features ({split})", progress=progress)
             for split, src in sources.items()}
    k = manifest.num_classes
    train_t = _targets(feats["train"], multi_label, k)
    out: dict[str, Any] = {"task": "multi_label" if multi_label else "single_label", "knn": {}, "linear": {}}
    eval_splits = [s for s in sources if s != "train"]
    for split in eval_splits:
        scores = knn_scores(feats["train"].x, train_t, feats[split].x, eval_cfg.knn.k, eval_cfg.knn.temperature)
        out["knn"][split] = classification_metrics(scores, feats[split].label, feats[split].multi_hot, multi_label)
    select = "val" if "val" in feats else eval_splits[0]
    metric = lambda s: classification_metrics(s, feats[select].label, feats[select].multi_hot, multi_label)["primary"]  # noqa: E731
    probe, grid = train_linear_probe(
        feats["train"].x, train_t, feats[select].x, _targets(feats[select], multi_label, k), metric, multi_label,
        weight_decays=tuple(eval_cfg.linear.weight_decays), epochs=eval_cfg.linear.epochs,
        batch=eval_cfg.linear.batch, lr=eval_cfg.linear.lr,
    )
    for split in eval_splits:
        out["linear"][split] = classification_metrics(probe.scores(feats[split].x), feats[split].label,
                                                      feats[split].multi_hot, multi_label)
    out["linear"]["weight_decay"] = probe.weight_decay
    out["linear"]["selected_on"] = select
    out["linear"]["val_grid"] = {str(k): v for k, v in grid.items()}
    out["feature_dim"] = int(feats["train"].x.shape[1])
    out["seconds"] = time.time() - began
    logging.info("Evaluated %s in %.1f s: kNN %s, linear %s", name, out["seconds"],
                 {s: round(m["primary"], 2) for s, m in out["knn"].items()},
                 {s: round(out["linear"][s]["primary"], 2) for s in eval_splits})
    return out
