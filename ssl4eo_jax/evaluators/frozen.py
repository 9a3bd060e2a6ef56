"""Frozen-encoder evaluators with one interface: ``FrozenEvaluator.run(variables) -> metrics``.

One evaluator is a set of protocols (kNN, our linear probe) on a set of splits, the ``train`` split
being the kNN bank and the probe's training set. The same class serves the kNN monitor during
pre-training (``config.evals.knn``: a small bank and query set every ``every`` steps), the
end-of-run evaluation of the pre-trained and random-init encoders (``config.eval``: every split),
and the ``knn`` / ``linear`` tasks of ``ssl4eo_jax.evaluate`` (which the benchmark grid runs).
Features are computed once per run and shared by its protocols.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ssl4eo_jax.evaluators.features import FrozenEncoder
from ssl4eo_jax.evaluators.protocols import knn_eval, linear_eval, split_features

PROTOCOLS = {"knn": knn_eval, "linear": linear_eval}


@dataclasses.dataclass
class FrozenEvaluator:
    """``protocols`` of a frozen encoder on ``sources`` (``train`` plus the evaluated splits)."""

    name: str
    frozen: FrozenEncoder
    sources: dict[str, Any]
    eval_cfg: Any  # config.eval: knn.k / knn.temperature, linear.*, multi_label
    protocols: tuple[str, ...] = ("knn", "linear")
    recompute_bn: bool = False  # re-estimate BN statistics on clean train images first
    per_batch: int = 0  # metrics averaged over batches of this size (the reference's), 0: whole split
    every: int = 0  # steps between runs during training; 0: only when called
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"Unknown frozen-encoder protocol(s) {unknown}; known: {sorted(PROTOCOLS)}.")
        manifest = self.sources["train"].manifest
        forced = self.eval_cfg.get("multi_label")
        self.multi_label = manifest.multi_label if forced is None else bool(forced)
        self.num_classes = manifest.num_classes

    @property
    def metric(self) -> str:
        """The primary metric's name: micro mAP for multi-label data, else overall accuracy."""
        return "micro_map" if self.multi_label else "oa"

    def due(self, step: int, last_step: int) -> bool:
        """Whether a training loop runs it after ``step``: every ``every`` steps and at the last."""
        return self.every > 0 and (step % self.every == 0 or step == last_step)

    def run(self, variables: dict[str, Any]) -> dict[str, Any]:
        """``{protocol: {split: metrics}, "feature_dim": D}`` for the encoder ``variables``."""
        feats = split_features(self.frozen, variables, self.sources, self.name, self.recompute_bn, self.progress)
        out: dict[str, Any] = {
            p: PROTOCOLS[p](feats, self.multi_label, self.num_classes, self.eval_cfg[p], self.per_batch)
            for p in self.protocols}
        out["feature_dim"] = int(feats["train"].x.shape[1])
        return out
