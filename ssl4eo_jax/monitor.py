"""Watching pre-training: collapse (``config.monitor``) and evaluators (``config.evals``).

The review saw SimSiam collapse after about 10 epochs on Sentinel-2 and picked an early checkpoint
by hand. Here every method logs the std of its L2-normalised embeddings and their effective rank
(``methods.base.embedding_metrics``), and the loop (``loop.TrainLoop``, whose hooks the monitor is)
calls ``TrainingMonitor.observe`` at each log point, which

1. warns loudly when ``embedding_std_rel`` (std x sqrt(dim): ~1 healthy, 0 collapsed) stays below
   ``std_threshold`` for ``patience`` consecutive log points from ``start_epoch`` on, records it
   for ``results.json`` (``collapse``) and, with ``stop_on_collapse``, stops the run;
2. runs the evaluators of ``config.evals`` (``evaluators.frozen.FrozenEvaluator``, the class of
   the end-of-run evaluation) every ``every`` steps and at the last step: ``config.evals.knn`` is
   the kNN monitor, the first ``bank`` train patches as the bank and the first ``queries`` val
   (else test) patches as queries, logged as ``knn_monitor`` in ``metrics.jsonl``;
3. keeps the checkpoint with the best score of the evaluator with ``keep_best`` (the kNN one) in
   ``<workdir>/checkpoints_best/`` beside the latest ones (orbax's best-checkpoint options on the
   ``knn_monitor`` metric); ``eval.use_best`` evaluates it instead of the final state.

Its state (detector counters, each evaluator's history, best score) is saved in each checkpoint's ``info`` item,
so a resumed run continues it; best checkpoints newer than the resumed step are dropped, as the
metrics log drops later records.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ssl4eo_jax.checkpoint import Checkpointer
from ssl4eo_jax.data.source import SplitSource
from ssl4eo_jax.errors import ConfigError
from ssl4eo_jax.evaluators import FrozenEncoder
from ssl4eo_jax.evaluators.frozen import PROTOCOLS, FrozenEvaluator
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


def training_evaluators(config: Any, frozen: FrozenEncoder, sources: dict[str, SplitSource]
                        ) -> dict[str, FrozenEvaluator]:
    """The evaluators of ``config.evals`` run during training: ``config.evals.<protocol>`` (``knn``,
    ``linear``) with ``every`` (steps; 0: off), the first ``bank`` train patches and the first
    ``queries`` val (else test) patches, BN running statistics, the settings of ``config.eval``."""
    evals = config.get("evals") or {}
    train = sources["train"]
    if evals and train.manifest.num_classes == 0:
        logging.info("The dataset has no labels: no evaluators during training.")
        return {}
    out = {}
    for name, cfg in evals.items():
        if name not in PROTOCOLS:
            raise ConfigError(f"config.evals.{name}: no such evaluator; the evaluators are {', '.join(PROTOCOLS)}.")
        if int(cfg.get("every", 0)) <= 0:
            continue
        split = next((s for s in ("val", "test") if s in sources), None)
        bank = Subset(train, 0, int(cfg.bank))
        queries = Subset(sources[split], 0, int(cfg.queries)) if split else Subset(train, len(bank), int(cfg.queries))
        out[name] = FrozenEvaluator(f"{name} monitor", frozen, {"train": bank, queries.split: queries}, config.eval,
                                    (name,), every=int(cfg.every), progress=False)
    return out


class TrainingMonitor(LoopHooks):
    """The collapse detector, the evaluators of ``config.evals`` and the best checkpoint: the
    pre-training loop's hooks (``loop.LoopHooks``)."""

    def __init__(self, config: Any, workdir: str, frozen: FrozenEncoder, sources: dict[str, SplitSource],
                 steps_per_epoch: float):
        cfg = config.get("monitor")
        self.method = str(config.method)  # the network scored: the one its official code evaluates
        self.enabled = bool(cfg is not None and cfg.enabled)  # the collapse watch
        self.cfg = cfg
        self.start_step = int(round(cfg.get("start_epoch", 0.0) * steps_per_epoch)) if self.enabled else 0
        self.detector = CollapseDetector(cfg.std_threshold, cfg.patience) if self.enabled else None
        self.evaluators = training_evaluators(config, frozen, sources)
        keeping = [name for name, ev in self.evaluators.items() if config.evals[name].get("keep_best", False)]
        if len(keeping) > 1:
            raise ConfigError(f"config.evals: keep_best is set for {keeping}; one evaluator chooses the best "
                              "checkpoint.")
        self.best_by = keeping[0] if keeping else None
        self.best = (Checkpointer(workdir, keep=1, subdir="checkpoints_best", best_metric=f"{self.best_by}_monitor")
                     if self.best_by else None)
        self.history: dict[str, list[dict[str, Any]]] = {name: [] for name in self.evaluators}
        self.best_step: int | None = None
        self.best_score = -math.inf
        self.due: list[str] = []

    def sync_due(self, step: int, last_step: int) -> bool:
        """An evaluator scores this step's state, so the loop reads the log point synchronously."""
        self.due = [name for name, ev in self.evaluators.items() if ev.due(step, last_step)]
        return bool(self.due)

    def observe(self, step: int, metrics: dict[str, float], state: Any, data_iter: Any, config: dict[str, Any],
                sync: bool) -> dict[str, Any]:
        """Handles one log point (``sync``: the evaluators found due by ``sync_due`` run on ``state``);
        returns what to add to its ``metrics.jsonl`` record."""
        record: dict[str, Any] = {}
        for name in self.due if sync else ():
            record.update(self._evaluate(name, self.evaluators[name], step, state, data_iter, config))
        if self.enabled:
            record.update(self._watch_collapse(step, metrics))
        return record

    def _evaluate(self, name: str, evaluator: FrozenEvaluator, step: int, state: Any, data_iter: Any,
                  config: dict[str, Any]) -> dict[str, Any]:
        """Runs one evaluator on the state's evaluated encoder; keeps the best checkpoint by it."""
        split = next(s for s in evaluator.sources if s != "train")
        out = evaluator.run(evaluated_encoder(state, self.method))
        score = float(out[name][split]["primary"])
        key = f"{name}_monitor"
        self.history[name].append({"step": step, evaluator.metric: score})
        logging.info("%s at step %d: %s %.2f", evaluator.name, step, evaluator.metric, score)
        if name == self.best_by and score > self.best_score:
            self.best_score, self.best_step = score, step
            # orbax keeps the best checkpoint by this metric and deletes the one it supersedes
            self.best.save(step, state, data_iter, config, info={key: score, "metric": evaluator.metric},
                           metrics={key: score})
        return {key: score}

    def _watch_collapse(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        event = self.detector.update(step, metrics) if step >= self.start_step else None
        if event == "collapse":
            stop = bool(self.cfg.stop_on_collapse)
            logging.warning(
                "\n%s\nCOLLAPSE: %s has stayed below %.3g for %d log points (now %.4g at step %d; effective rank "
                "%.3g).%s\n%s", "!" * 100, COLLAPSE_METRIC, self.detector.threshold, self.detector.patience,
                metrics.get(COLLAPSE_METRIC, float("nan")), step, metrics.get("effective_rank", float("nan")),
                " Stopping (monitor.stop_on_collapse)." if stop else
                " Consider --config.eval.use_best=True or monitor.stop_on_collapse.", "!" * 100)
            return {"collapse": True, "stop": True} if stop else {"collapse": True}
        if event == "recovered":
            logging.warning("The embeddings recovered from collapse at step %d (%s %.4g).", step, COLLAPSE_METRIC,
                            metrics.get(COLLAPSE_METRIC, float("nan")))
        return {}

    def checkpoint_info(self) -> dict[str, Any]:
        """What a checkpoint stores to resume the monitor (the collapse watch, each evaluator's
        history as ``<name>_history``, the best score)."""
        info: dict[str, Any] = {f"{name}_history": history for name, history in self.history.items()}
        if self.enabled:
            info["collapse"] = self.detector.state()
        if self.best_by:
            info.update(best_step=self.best_step, best_score=self.best_score if self.best_step is not None else None)
        return info

    def restore(self, info: dict[str, Any], step: int) -> None:
        """Continues from a checkpoint's ``info`` at ``step``; drops best checkpoints after it."""
        if self.enabled:
            self.detector.load(info.get("collapse", {}))
        self.history = {name: list(info.get(f"{name}_history", [])) for name in self.evaluators}
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
        """``results.json``'s ``collapse`` entry and one ``<name>_monitor`` entry per evaluator."""
        out: dict[str, Any] = {"collapse": self.detector.summary()} if self.enabled else {}
        for name, ev in self.evaluators.items():
            queries = next(src for split, src in ev.sources.items() if split != "train")
            entry = {"metric": ev.metric, "bank": len(ev.sources["train"]), "queries": len(queries),
                     "query_split": queries.split, "every": ev.every, "history": self.history[name]}
            if name == self.best_by:
                entry.update(best_step=self.best_step,
                             best_score=self.best_score if self.best_step is not None else None)
            out[f"{name}_monitor"] = entry
        return out

    def close(self) -> None:
        if self.best is not None:
            self.best.close()
