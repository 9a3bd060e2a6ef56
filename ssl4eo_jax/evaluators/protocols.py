"""The frozen-encoder protocols: features of every split, then kNN or our linear probe on them."""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.evaluators.encoders import Encoder
from ssl4eo_jax.evaluators.features import Features, FrozenEncoder, eval_preprocess
from ssl4eo_jax.evaluators.knn import knn_scores
from ssl4eo_jax.evaluators.linear import train_linear_probe
from ssl4eo_jax.evaluators.metrics import classification_metrics, per_batch_metrics

BN_MODES = {"recompute": "re-estimated on clean train images (up to 20 eval batches)",
            "running": "the stored running statistics"}


def recompute_bn(eval_cfg: Any) -> bool:
    """Whether ``config.eval.bn`` asks for BN statistics re-estimated on clean train images; the
    same for every encoder of a comparison (pre-trained and random init)."""
    mode = eval_cfg.get("bn", "recompute")
    if mode not in BN_MODES:
        raise ConfigError(f"config.eval.bn={mode!r}: use 'recompute' or 'running'.")
    return mode == "recompute"


def _targets(features: Features, multi_label: bool, num_classes: int) -> np.ndarray:
    if multi_label:
        return features.multi_hot
    return np.eye(num_classes, dtype=np.float32)[features.label]


def frozen_encoder(encoder: Encoder, mesh: jax.sharding.Mesh, eval_cfg: Any, mean: np.ndarray, std: np.ndarray,
                   bands: Callable[[Any], Any] | None = None) -> FrozenEncoder:
    """The compiled feature extractor of ``config.eval`` for an encoder architecture (``bands``: the
    mapping of the data's bands to the encoder's, see ``transfer.BandMap.apply``)."""
    return FrozenEncoder(encoder, eval_preprocess(mean, std, eval_cfg.crop_fraction, eval_cfg.size, bands), mesh,
                         eval_cfg.batch)


def split_features(frozen: FrozenEncoder, variables: dict[str, Any], sources: dict[str, Any], name: str,
                   recompute_bn: bool = False, progress: bool = True) -> dict[str, Features]:
    """Features of every split in ``sources`` (BN statistics first re-estimated on ``train`` when
    ``recompute_bn``, for random-init encoders)."""
    if recompute_bn:
        variables = frozen.recompute_batch_stats(variables, sources["train"])
    return {split: frozen.features(variables, src, desc=f"{name} features ({split})", progress=progress)
            for split, src in sources.items()}


def split_metrics(scores: np.ndarray, features: Features, multi_label: bool, per_batch: int = 0) -> dict[str, float]:
    """Metrics of one split over the whole split, or averaged over batches of ``per_batch``."""
    if per_batch:
        return per_batch_metrics(scores, features.label, features.multi_hot, multi_label, per_batch)
    return classification_metrics(scores, features.label, features.multi_hot, multi_label)


def knn_eval(feats: dict[str, Features], multi_label: bool, num_classes: int, knn_cfg: Any, per_batch: int = 0
             ) -> dict[str, Any]:
    """kNN metrics of every split but ``train`` (the memory bank)."""
    train_t = _targets(feats["train"], multi_label, num_classes)
    return {split: split_metrics(knn_scores(feats["train"].x, train_t, f.x, knn_cfg.k, knn_cfg.temperature), f,
                                 multi_label, per_batch)
            for split, f in feats.items() if split != "train"}


def linear_eval(feats: dict[str, Features], multi_label: bool, num_classes: int, linear_cfg: Any,
                per_batch: int = 0) -> dict[str, Any]:
    """Our linear probe (weight decay chosen on val): metrics of every split but ``train``."""
    eval_splits = [s for s in feats if s != "train"]
    select = "val" if "val" in feats else eval_splits[0]
    metric = lambda s: split_metrics(s, feats[select], multi_label)["primary"]  # noqa: E731
    probe, grid = train_linear_probe(
        feats["train"].x, _targets(feats["train"], multi_label, num_classes), feats[select].x,
        _targets(feats[select], multi_label, num_classes), metric, multi_label,
        weight_decays=tuple(linear_cfg.weight_decays), epochs=linear_cfg.epochs, batch=linear_cfg.batch,
        lr=linear_cfg.lr,
    )
    out: dict[str, Any] = {s: split_metrics(probe.scores(feats[s].x), feats[s], multi_label, per_batch)
                           for s in eval_splits}
    out["weight_decay"] = probe.weight_decay
    out["selected_on"] = select
    out["val_grid"] = {str(k): v for k, v in grid.items()}
    return out
