"""Bootstrap intervals and paired verdicts: a difference inside its interval is never a win."""
import numpy as np
import pytest

from arxivcls.metrics import classification_metrics
from arxivcls.stats import bootstrap, intervals, paired_differences, point_metrics, scores


def probs_with_accuracy(y_true: np.ndarray, accuracy: float, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    predicted = np.where(rng.random(len(y_true)) < accuracy, y_true, rng.integers(0, num_classes, len(y_true)))
    probs = rng.dirichlet(np.ones(num_classes), len(y_true)) * 0.5
    probs[np.arange(len(y_true)), predicted] += 0.5
    return probs


def test_resampled_scores_agree_with_the_metrics_of_the_whole_split():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 7, 300)
    probs = probs_with_accuracy(y_true, 0.6, 7, seed=1)
    expected = classification_metrics(y_true, probs, top_k=3)
    got = scores(point_metrics(y_true, probs, top_k=3))
    for metric, value in got.items():
        assert value == pytest.approx(expected[metric], abs=1e-12), metric


def test_identical_models_are_not_different_and_a_clearly_better_one_wins():
    y_true = np.random.default_rng(0).integers(0, 5, 400)
    weak = probs_with_accuracy(y_true, 0.5, 5, seed=1)
    strong = probs_with_accuracy(y_true, 0.9, 5, seed=2)
    points = {"a": point_metrics(y_true, weak, 3), "a_copy": point_metrics(y_true, weak.copy(), 3),
              "strong": point_metrics(y_true, strong, 3)}
    samples = bootstrap(points, n_resamples=500, seed=0)
    full = {name: scores(p) for name, p in points.items()}
    table = paired_differences(samples, full, [("a_copy", "a"), ("strong", "a"), ("a", "strong")],
                               ["accuracy", "macro_f1", "ece"]).set_index(["model", "reference", "metric"]).sort_index()
    assert (table.loc[("a_copy", "a")].verdict == "no significant difference").all()
    assert (table.loc[("a_copy", "a")].difference == 0).all()
    assert table.loc[("strong", "a", "accuracy")].verdict == "better"
    assert table.loc[("strong", "a", "macro_f1")].verdict == "better"
    assert table.loc[("a", "strong", "accuracy")].verdict == "worse"
    ci = intervals(samples)
    assert ci.at["a", "accuracy_low"] < full["a"]["accuracy"] < ci.at["a", "accuracy_high"]


def test_a_small_difference_on_few_papers_is_not_called_a_win():
    y_true = np.random.default_rng(3).integers(0, 4, 60)
    base = probs_with_accuracy(y_true, 0.7, 4, seed=4)
    nudged = base.copy()
    wrong = np.flatnonzero(base.argmax(1) != y_true)[0]  # one more paper right: +1.7 points
    nudged[wrong, y_true[wrong]] = 2.0
    points = {"base": point_metrics(y_true, base, 3), "nudged": point_metrics(y_true, nudged, 3)}
    samples = bootstrap(points, n_resamples=500, seed=0)
    row = paired_differences(samples, {n: scores(p) for n, p in points.items()}, [("nudged", "base")], ["accuracy"]).iloc[0]
    assert row.difference > 0 and row.verdict == "no significant difference"
