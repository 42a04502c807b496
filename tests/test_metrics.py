import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, top_k_accuracy_score

from arxivcls.metrics import (
    classification_metrics, confusion_pairs, largest_differences, per_category_table, size_bin_label, size_bin_table,
)


def one_hot(y_pred, num_classes):
    return np.eye(num_classes)[y_pred]


def test_classification_metrics_equal_sklearn():
    # 5 classes: class 3 is never predicted, class 4 never occurs in y_true
    y_true = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 0])
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(5), size=len(y_true))
    y_pred = np.array([0, 1, 1, 1, 2, 4, 0, 2, 4, 0])
    proba[np.arange(len(y_true)), y_pred] += 2.0  # make y_pred the argmax
    proba /= proba.sum(axis=1, keepdims=True)

    got = classification_metrics(y_true, proba)

    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)
        assert got[f"{average}_precision"] == pytest.approx(p)
        assert got[f"{average}_recall"] == pytest.approx(r)
        assert got[f"{average}_f1"] == pytest.approx(f)
    assert got["top3_accuracy"] == pytest.approx(top_k_accuracy_score(y_true, proba, k=3, labels=range(5)))
    assert got["mean_confidence"] == pytest.approx(proba.max(axis=1).mean())
    # macro averages over the 5 labels seen in y_true or y_pred, not just the 4 in y_true
    four_label_f1 = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)[2]
    assert got["macro_f1"] != pytest.approx(four_label_f1)


def test_top_k_and_ece_by_hand():
    y_true = np.array([0, 1, 2, 1])
    proba = np.array([
        [0.90, 0.05, 0.05],  # right, confidence 0.9
        [0.60, 0.30, 0.10],  # wrong, 0.6; true class is 2nd
        [0.40, 0.35, 0.25],  # wrong, 0.4; true class is 3rd
        [0.30, 0.45, 0.25],  # right, 0.45
    ])
    got = classification_metrics(y_true, proba, top_k=2, n_bins=2)
    assert got["top2_accuracy"] == pytest.approx(0.75)
    assert got["mean_confidence"] == pytest.approx(0.5875)
    # bin (0.5, 1]: accuracy 1/2, confidence 0.75; bin (0, 0.5]: accuracy 1/2, confidence 0.425
    assert got["ece"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.075)
    assert classification_metrics(y_true, one_hot([0, 1, 2, 1], 3))["ece"] == pytest.approx(0.0)


def test_size_bin_labels():
    assert [size_bin_label(c) for c in (1, 10, 11, 100, 101, 1000, 1001, 10000, 10001, 0)] == [
        "1-10", "1-10", "11-100", "11-100", "101-1000", "101-1000", "1001-10000", "1001-10000", "10000+", "0"]


# A(5 train) and E(8) are tiny, B(50) small, C(20000) huge, F(300) has no test papers, D nothing at all.
LABELS = ["A", "B", "C", "D", "E", "F"]
TRAIN_COUNTS = {"A": 5, "B": 50, "C": 20000, "E": 8, "F": 300}
Y_TRUE = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 4])
PREDICTIONS = {
    "good": np.array([0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 4]),
    "bad": np.array([2, 2, 2, 1, 1, 2, 2, 2, 2, 2, 0]),
}


def test_per_category_table():
    table = per_category_table(Y_TRUE, PREDICTIONS, LABELS, TRAIN_COUNTS).set_index("category")
    assert list(table.index) == ["C", "F", "B", "E", "A"]  # by train count, D dropped
    assert table.support.to_dict() == {"C": 5, "F": 0, "B": 3, "E": 1, "A": 2}
    assert table.size_bin.to_dict() == {"C": "10000+", "F": "101-1000", "B": "11-100", "E": "1-10", "A": "1-10"}
    assert table.good_accuracy["A"] == pytest.approx(0.5)
    assert table.bad_accuracy["B"] == pytest.approx(2 / 3)
    assert table.good_f1["B"] == pytest.approx(2 * 0.75 / 1.75)  # precision 3/4, recall 1
    assert table.bad_f1["C"] == pytest.approx(2 * 0.625 / 1.625)  # precision 5/8, recall 1
    assert np.isnan(table.good_accuracy["F"]) and np.isnan(table.good_f1["F"])
    # the mean of the defined per-category F1s is sklearn's macro F1
    for model, y_pred in PREDICTIONS.items():
        expected = classification_metrics(Y_TRUE, one_hot(y_pred, len(LABELS)))["macro_f1"]
        assert table[f"{model}_f1"].mean() == pytest.approx(expected)


def test_size_bin_table():
    table = size_bin_table(Y_TRUE, PREDICTIONS, LABELS, TRAIN_COUNTS).set_index("size_bin")
    assert list(table.index) == ["1-10", "11-100", "101-1000", "1001-10000", "10000+"]
    assert table.categories.to_dict() == {"1-10": 2, "11-100": 1, "101-1000": 1, "1001-10000": 0, "10000+": 1}
    assert table.test_papers.to_dict() == {"1-10": 3, "11-100": 3, "101-1000": 0, "1001-10000": 0, "10000+": 5}
    assert table.good_accuracy["1-10"] == pytest.approx(2 / 3)  # A 1 of 2, E 1 of 1
    assert table.bad_accuracy["1-10"] == pytest.approx(0.0)
    assert table.good_macro_f1["1-10"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert table.bad_accuracy["11-100"] == pytest.approx(2 / 3)
    assert np.isnan(table.good_accuracy["101-1000"]) and np.isnan(table.good_macro_f1["101-1000"])


def test_confusion_pairs():
    pairs = confusion_pairs(Y_TRUE, PREDICTIONS["bad"], LABELS, top=2)
    assert pairs[["true", "predicted", "count"]].values.tolist() == [["A", "C", 2], ["B", "C", 1]]
    assert pairs.share_of_true.tolist() == pytest.approx([1.0, 1 / 3])
    assert confusion_pairs(Y_TRUE, Y_TRUE, LABELS).empty


def test_largest_differences():
    table = per_category_table(Y_TRUE, PREDICTIONS, LABELS, TRAIN_COUNTS)
    diff = largest_differences(table, "good", "bad", top=3)
    assert diff.category.tolist() == ["E", "A", "C"]
    assert diff.f1_difference.tolist() == pytest.approx([1.0, 2 / 3, 1 - 2 * 0.625 / 1.625])
    assert diff.support.tolist() == [1, 2, 5]
