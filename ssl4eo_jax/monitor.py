"""Watching pre-training for collapse (``config.monitor``).

The review saw SimSiam collapse after about 10 epochs on Sentinel-2 and picked an early checkpoint
by hand. Here every method logs the std of its L2-normalised embeddings and their effective rank
(``methods.base.embedding_metrics``), and the loop (``loop.TrainLoop``, whose hooks the monitor is)
calls ``TrainingMonitor.observe`` at each log point, which

1. warns loudly when ``embedding_std_rel`` (std x sqrt(dim): ~1 healthy, 0 collapsed) stays below
   ``std_threshold`` for ``patience`` consecutive log points from ``start_epoch`` on, records it
   for ``results.json`` (``collapse``) and, with ``stop_on_collapse``, stops the run;
2. every ``every`` steps (and at the last step) scores a kNN classifier of the frozen encoder: the
   first ``bank`` train patches as the bank and the first ``queries`` val (else test) patches as
   queries, logged as ``knn_monitor`` in ``metrics.jsonl``;
3. keeps the checkpoint with the best kNN score in ``<workdir>/checkpoints_best/`` beside the
   latest ones (orbax's best-checkpoint options on the ``knn_monitor`` metric); ``eval.use_best``
   evaluates it instead of the final state.

Its state (detector counters, kNN history, best score) is saved in each checkpoint's ``info`` item,
so a resumed run continues it; best checkpoints newer than the resumed step are dropped, as the
metrics log drops later records.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.evaluators import FrozenEncoder
from ssl4eo_jax.evaluators.knn import knn_scores
from ssl4eo_jax.evaluators.metrics import classification_metrics
from ssl4eo_jax.loop import LoopHooks
from ssl4eo_jax.methods.base import evaluated_encoder

COLLAPSE_METRIC = "embedding_std_rel"
WATCHED = ("embedding_std", "embedding_std_rel", "effective_rank")


class CollapseDetector:
    """Fires once the watched metric has been below ``threshold`` (or not finite) at ``patience``
    consecutive log points; a log point above it resets the count and ends a collapse."""

    def __init__(self, threshold: float, patience: int):
        self.threshold = float(threshold)
        self.patience = max(1, int(patience))
        self.below = 0
        self.collapsed = False
        self.events: list[dict[str, Any]] = []

    def update(self, step: int, metrics: dict[str, float]) -> str | None:
        """Feeds one log point; returns "collapse" or "recovered" when the state changes."""
        if COLLAPSE_METRIC not in metrics:
            return None
        value = float(metrics[COLLAPSE_METRIC])
        values = {k: float(metrics[k]) for k in WATCHED if k in metrics}
        if not math.isfinite(value) or value < self.threshold:
            self.below += 1
            if self.below >= self.patience and not self.collapsed:
                self.collapsed = True
                self.events.append({"event": "collapse", "step": step, **values})
                return "collapse"
            return None
        self.below = 0
        if self.collapsed:
            self.collapsed = False
            self.events.append({"event": "recovered", "step": step, **values})
            return "recovered"
        return None

    def state(self) -> dict[str, Any]:
        return {"below": self.below, "collapsed": self.collapsed, "events": self.events}

    def load(self, state: dict[str, Any]) -> None:
        self.below = int(state.get("below", 0))
        self.collapsed = bool(state.get("collapsed", False))
        self.events = list(state.get("events", []))

    def summary(self) -> dict[str, Any]:
        collapses = [e for e in self.events if e["event"] == "collapse"]
        return {
            "detected": bool(collapses), "first_step": collapses[0]["step"] if collapses else None,
            "collapsed_at_end": self.collapsed, "metric": COLLAPSE_METRIC, "threshold": self.threshold,
            "patience_logs": self.patience, "events": self.events,
        }


class Subset:
    """``count`` consecutive records of a split from ``start``, with a split's reading interface."""

    def __init__(self, source: SplitSource, start: int, count: int):
        self.manifest, self.split = source.manifest, source.split
        self._source, self._start, self._count = source, start, max(0, min(count, len(source) - start))

    def __len__(self) -> int:
        return self._count

    def raw(self, index: int) -> bytes:
        return self._source.raw(self._start + index)

    def decode(self, raw: bytes, index: int | None = None) -> dict[str, Any]:
        return self._source.decode(raw, None if index is None else self._start + index)


class KnnMonitor:
    """The kNN score (the split's primary metric: OA or micro mAP, %) of an encoder on a fixed
    small bank and query set."""

    def __init__(self, frozen: FrozenEncoder, sources: dict[str, SplitSource], bank: int, queries: int,
                 eval_cfg: Any):
        train = sources["train"]
        split = next((s for s in ("val", "test") if s in sources), None)
        self.bank = Subset(train, 0, bank)
        self.queries = Subset(sources[split], 0, queries) if split else Subset(train, len(self.bank), queries)
        manifest = train.manifest
        self.multi_label = manifest.multi_label if eval_cfg.get("multi_label") is None else bool(eval_cfg.multi_label)
        self.metric = "micro_map" if self.multi_label else "oa"
        self.num_classes = manifest.num_classes
        self.frozen, self.k, self.temperature = frozen, int(eval_cfg.knn.k), float(eval_cfg.knn.temperature)

    def score(self, encoder_variables: dict[str, Any]) -> float:
        bank = self.frozen.features(encoder_variables, self.bank, progress=False)
        queries = self.frozen.features(encoder_variables, self.queries, progress=False)
        targets = bank.multi_hot if self.multi_label else np.eye(self.num_classes, dtype=np.float32)[bank.label]
        scores = knn_scores(bank.x, targets, queries.x, self.k, self.temperature)
        return float(classification_metrics(scores, queries.label, queries.multi_hot, self.multi_label)["primary"])


class TrainingMonitor(LoopHooks):
    """The collapse detector, the kNN monitor and the best checkpoint: the pre-training loop's hooks
    (``loop.LoopHooks``)."""

    def __init__(self, config: Any, workdir: str, frozen: FrozenEncoder, sources: dict[str, SplitSource],
                 steps_per_epoch: float):
        cfg = config.get("monitor")
        self.method = str(config.method)  # the network scored: the one its official code evaluates
        self.enabled = bool(cfg is not None and cfg.enabled)
        self.cfg = cfg
        self.start_step = int(round(cfg.get("start_epoch", 0.0) * steps_per_epoch)) if self.enabled else 0
        self.detector = CollapseDetector(cfg.std_threshold, cfg.patience) if self.enabled else None
        self.knn: KnnMonitor | None = None
        if self.enabled and cfg.every > 0:
            if sources["train"].manifest.num_classes > 0:
                self.knn = KnnMonitor(frozen, sources, cfg.bank, cfg.queries, config.eval)
            else:
                logging.info("The dataset has no labels: no kNN monitor.")
        self.best = (Checkpointer(workdir, keep=1, subdir="checkpoints_best", best_metric="knn_monitor")
                     if self.knn is not None and cfg.keep_best else None)
        self.history: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best_score = -math.inf
        self.stop = False

    def sync_due(self, step: int, last_step: int) -> bool:
        """A kNN monitor point: it scores this step's state, so the loop reads it synchronously."""
        return self.knn is not None and (step % self.cfg.every == 0 or step == last_step)

    def observe(self, step: int, metrics: dict[str, float], state: Any, data_iter: Any, config: dict[str, Any],
                sync: bool) -> dict[str, Any]:
        """Handles one log point; returns what to add to its ``metrics.jsonl`` record."""
        record: dict[str, Any] = {}
        if not self.enabled:
            return record
        if sync and self.knn is not None:
            score = self.knn.score(evaluated_encoder(state, self.method))
            self.history.append({"step": step, self.knn.metric: score})
            record["knn_monitor"] = score
            logging.info("kNN monitor at step %d: %s %.2f (best %.2f)", step, self.knn.metric, score,
                         max(score, self.best_score))
            if score > self.best_score:
                self.best_score, self.best_step = score, step
                if self.best is not None:  # orbax keeps the best by this metric and deletes the older one
                    self.best.save(step, state, data_iter, config, info={"knn_monitor": score, "metric": self.knn.metric},
                                   metrics={"knn_monitor": score})
        event = self.detector.update(step, metrics) if step >= self.start_step else None
        if event == "collapse":
            record["collapse"] = True
            self.stop = bool(self.cfg.stop_on_collapse)
            logging.warning(
                "\n%s\nCOLLAPSE: %s has stayed below %.3g for %d log points (now %.4g at step %d; effective rank "
                "%.3g).%s\n%s", "!" * 100, COLLAPSE_METRIC, self.detector.threshold, self.detector.patience,
                metrics.get(COLLAPSE_METRIC, float("nan")), step, metrics.get("effective_rank", float("nan")),
                " Stopping (monitor.stop_on_collapse)." if self.stop else
                " Consider --config.eval.use_best=True or monitor.stop_on_collapse.", "!" * 100)
        elif event == "recovered":
            logging.warning("The embeddings recovered from collapse at step %d (%s %.4g).", step, COLLAPSE_METRIC,
                            metrics.get(COLLAPSE_METRIC, float("nan")))
        return record

    def checkpoint_info(self) -> dict[str, Any]:
        """What a checkpoint stores to resume the monitor."""
        if not self.enabled:
            return {}
        return {"collapse": self.detector.state(), "knn_history": self.history, "best_step": self.best_step,
                "best_score": self.best_score if self.best_step is not None else None}

    def restore(self, info: dict[str, Any], step: int) -> None:
        """Continues from a checkpoint's ``info`` at ``step``; drops best checkpoints after it."""
        if not self.enabled:
            return
        self.detector.load(info.get("collapse", {}))
        self.history = list(info.get("knn_history", []))
        self.best_step = info.get("best_step")
        self.best_score = info["best_score"] if info.get("best_score") is not None else -math.inf
        if self.best is not None:
            self.best.drop_after(step)

    def describe(self, metrics: dict[str, float]) -> str:
        """The collapse metrics for the log line."""
        if COLLAPSE_METRIC not in metrics:
            return ""
        return f"  emb std {metrics['embedding_std']:.3g} (rel {metrics[COLLAPSE_METRIC]:.3g})  erank " \
               f"{metrics.get('effective_rank', float('nan')):.3g}"

    def best_state(self, state_like: Any) -> tuple[Any, int] | None:
        """The best checkpoint's train state and step, or None."""
        step = self.best.best_step() if self.best is not None else None
        if step is None:
            return None
        return self.best.restore_state(step, state_like), step

    def summary(self) -> dict[str, Any]:
        """``results.json``'s ``collapse`` and ``knn_monitor`` entries."""
        if not self.enabled:
            return {}
        out: dict[str, Any] = {"collapse": self.detector.summary()}
        if self.knn is not None:
            out["knn_monitor"] = {"metric": self.knn.metric, "bank": len(self.knn.bank),
                                  "queries": len(self.knn.queries), "query_split": self.knn.queries.split,
                                  "history": self.history, "best_step": self.best_step,
                                  "best_score": self.best_score if self.best_step is not None else None}
        return out

    def close(self) -> None:
        if self.best is not None:
            self.best.close()
