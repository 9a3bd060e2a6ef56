"""Classification metrics over a whole split (never averaged per batch), matching scikit-learn.

Single-label: overall accuracy (OA) and average accuracy (AA, the mean recall over the classes
present in ``y_true``; sklearn's ``balanced_accuracy_score``). Multi-label: average precision per
class and micro-averaged (sklearn's ``average_precision_score``, including its conventions: tied
scores form one threshold, a class without positives scores 0), and F1 at a 0.5 threshold (sklearn's
``f1_score`` with ``zero_division=0``).
"""

from __future__ import annotations

import numpy as np


def overall_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def average_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes that occur in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(np.mean(recalls))


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the step precision-recall curve of one binary problem (sklearn's definition)."""
    y_true = np.asarray(y_true, np.float64).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    y, s = y_true[order], scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = 1 + last_of_tie - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray, average: str = "macro") -> float:
    """mAP of multi-hot ``y_true`` (N, K) against ``scores`` (N, K): ``macro`` or ``micro``."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if average == "micro":
        return average_precision(y_true.ravel(), scores.ravel())
    if average == "macro":
        return float(np.mean([average_precision(y_true[:, k], scores[:, k]) for k in range(y_true.shape[1])]))
    raise ValueError(f"average must be 'micro' or 'macro', not {average!r}")


def f1(y_true: np.ndarray, y_pred: np.ndarray, average: str = "macro") -> float:
    """F1 of multi-hot predictions (N, K); a class with no true or predicted positives scores 0."""
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = np.sum(y_true & y_pred, axis=0).astype(np.float64)
    fp = np.sum(~y_true & y_pred, axis=0).astype(np.float64)
    fn = np.sum(y_true & ~y_pred, axis=0).astype(np.float64)
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    elif average != "macro":
        raise ValueError(f"average must be 'micro' or 'macro', not {average!r}")
    denom = 2 * tp + fp + fn
    per = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return float(np.mean(per))


def classification_metrics(scores: np.ndarray, labels: np.ndarray, multi_hot: np.ndarray, multi_label: bool
                           ) -> dict[str, float]:
    """The split's metrics in percent; ``primary`` is OA (single-label) or micro mAP (multi-label)."""
    if multi_label:
        out = {
            "map_micro": mean_average_precision(multi_hot, scores, "micro"),
            "map_macro": mean_average_precision(multi_hot, scores, "macro"),
            "f1_micro": f1(multi_hot, scores >= 0.5, "micro"),
            "f1_macro": f1(multi_hot, scores >= 0.5, "macro"),
        }
        out = {k: 100 * v for k, v in out.items()}
        out["primary"] = out["map_micro"]
        return out
    pred = np.argmax(scores, axis=1)
    out = {"oa": 100 * overall_accuracy(labels, pred), "aa": 100 * average_accuracy(labels, pred)}
    out["primary"] = out["oa"]
    return out


def per_batch_metrics(scores: np.ndarray, labels: np.ndarray, multi_hot: np.ndarray, multi_label: bool,
                      batch: int) -> dict[str, float]:
    """The reference's way: ``classification_metrics`` of consecutive batches of ``batch`` examples,
    averaged over batches (the last may be smaller). Biased for small batches; offered only to set
    our numbers beside the paper's."""
    parts = [classification_metrics(scores[i : i + batch], labels[i : i + batch], multi_hot[i : i + batch],
                                    multi_label) for i in range(0, len(scores), batch)]
    return {key: float(np.mean([p[key] for p in parts])) for key in parts[0]}
