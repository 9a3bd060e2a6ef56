"""Evaluation of frozen encoders: kNN and linear probe on the validation and test splits
(``protocols``), run through one interface (``frozen.FrozenEvaluator``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.evaluators.features import FrozenEncoder, eval_preprocess
from ssl4eo_jax.evaluators.frozen import FrozenEvaluator
from ssl4eo_jax.evaluators.protocols import (
    BN_MODES,
    frozen_encoder,
    knn_eval,
    linear_eval,
    recompute_bn,
    split_features,
    split_metrics,
)

__all__ = ["BN_MODES", "FrozenEncoder", "FrozenEvaluator", "evaluate_frozen", "eval_preprocess", "frozen_encoder",
           "knn_eval", "linear_eval", "recompute_bn", "split_features", "split_metrics"]


def evaluate_frozen(
    frozen: FrozenEncoder, variables: dict[str, Any], sources: dict[str, SplitSource], eval_cfg: Any,
    name: str, recompute_bn: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """kNN and linear-probe metrics of one encoder on every split in ``sources`` but ``train``."""
    began = time.time()
    evaluator = FrozenEvaluator(name, frozen, sources, eval_cfg, ("knn", "linear"), recompute_bn, progress=progress)
    out: dict[str, Any] = {"task": "multi_label" if evaluator.multi_label else "single_label",
                           **evaluator.run(variables)}
    out["seconds"] = time.time() - began
    eval_splits = [s for s in sources if s != "train"]
    logging.info("Evaluated %s in %.1f s: kNN %s, linear %s", name, out["seconds"],
                 {s: round(m["primary"], 2) for s, m in out["knn"].items()},
                 {s: round(out["linear"][s]["primary"], 2) for s in eval_splits})
    return out
