"""Whole-split metrics against scikit-learn, on random and edge-case inputs."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ssl4eo_jax.evaluators import metrics


@pytest.mark.parametrize("seed", range(5))
def test_single_label_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, size=200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 7, size=200))
    assert metrics.overall_accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred))
    assert metrics.average_accuracy(y, pred) == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_average_accuracy_ignores_classes_absent_from_truth():
    y = np.array([0, 0, 1, 1, 1])
    pred = np.array([0, 2, 1, 1, 2])  # class 2 predicted but never true
    with pytest.warns(UserWarning):
        expected = skm.balanced_accuracy_score(y, pred)
    assert metrics.average_accuracy(y, pred) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((150, 6)) < 0.3).astype(int)
    scores = np.round(rng.random((150, 6)) + 0.5 * y, 1)  # rounding creates ties
    for k in range(6):
        assert metrics.average_precision(y[:, k], scores[:, k]) == pytest.approx(
            skm.average_precision_score(y[:, k], scores[:, k]))
    for average in ("micro", "macro"):
        assert metrics.mean_average_precision(y, scores, average) == pytest.approx(
            skm.average_precision_score(y, scores, average=average))


def test_average_precision_edge_cases():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])  # class 1 has no positives
    scores = np.array([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])  # all scores equal
    with pytest.warns(UserWarning):
        expected_macro = skm.average_precision_score(y, scores, average="macro")
    assert metrics.mean_average_precision(y, scores, "macro") == pytest.approx(expected_macro)
    assert metrics.mean_average_precision(y, scores, "micro") == pytest.approx(
        skm.average_precision_score(y, scores, average="micro"))
    assert metrics.average_precision(y[:, 0], scores[:, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((100, 5)) < 0.3).astype(int)
    y[:, 4] = 0  # a class with no positives at all
    pred = (rng.random((100, 5)) < 0.3).astype(int)
    pred[:, 3] = 0  # a class never predicted
    for average in ("micro", "macro"):
        assert metrics.f1(y, pred, average) == pytest.approx(
            skm.f1_score(y, pred, average=average, zero_division=0))


def test_classification_metrics_reports_percent():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    out = metrics.classification_metrics(scores, np.array([0, 1, 1]), np.zeros((3, 2)), multi_label=False)
    assert out["oa"] == pytest.approx(200 / 3) and out["primary"] == out["oa"]
    assert out["aa"] == pytest.approx(75.0)
    multi = np.array([[1, 0], [0, 1], [1, 1]])
    out = metrics.classification_metrics(scores, np.zeros(3, int), multi, multi_label=True)
    assert out["map_micro"] == pytest.approx(100 * skm.average_precision_score(multi, scores, average="micro"))
    assert out["f1_macro"] == pytest.approx(100 * skm.f1_score(multi, scores >= 0.5, average="macro"))
