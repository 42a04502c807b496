import numpy as np
import pandas as pd
import pytest

from arxivcls.metrics import per_category_table, size_bin_table
from arxivcls.report import (
    param_importances, plot_category_f1, plot_confusion_pairs, plot_learning_curves, plot_param_importance,
    plot_size_bins, write_report_md, write_tables,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MODELS = ["baseline", "default", "tuned"]


def comparison(accuracy, macro_f1):
    table = pd.DataFrame({
        "accuracy": accuracy, "macro_f1": macro_f1, "weighted_f1": [0.70, 0.72, 0.74],
        "top3_accuracy": [0.90, 0.91, 0.93], "ece": [0.05, 0.04, 0.03], "mean_confidence": [0.7, 0.8, 0.8],
        "macro_precision": [0.3, 0.3, 0.3],
    }, index=MODELS)
    table.index.name = "model"
    return table


def size_bins(small_accuracy):
    rows = [{"size_bin": b, "categories": c, "test_papers": n} for b, c, n in
            [("1-10", 4, 6), ("11-100", 3, 30), ("101-1000", 2, 100), ("1001-10000", 0, 0), ("10000+", 1, 800)]]
    table = pd.DataFrame(rows)
    for model in MODELS:
        table[f"{model}_accuracy"] = [small_accuracy[model], small_accuracy[model], 0.8, np.nan, 0.9]
        table[f"{model}_macro_f1"] = [small_accuracy[model] / 2, small_accuracy[model] / 2, 0.7, np.nan, 0.9]
    return table


def context(accuracy, macro_f1, small_accuracy):
    return {
        "study_name": "unit",
        "comparison": comparison(accuracy, macro_f1),
        "size_bins": size_bins(small_accuracy),
        "plots": {"size_bins": "size_bins.png", "param_importance": None},
        "study": {"wall_seconds": 3600.0, "num_trials": 8, "trials_by_status": {"completed": 3, "stopped_by_asha": 5}},
        "baseline_fit_seconds": 12.0,
    }


def test_report_conclusions_follow_the_numbers(tmp_path):
    text = write_report_md(tmp_path, context(
        accuracy=[0.70, 0.74, 0.76], macro_f1=[0.40, 0.30, 0.35], small_accuracy={"baseline": 0.5, "default": 0.1, "tuned": 0.2}))
    assert (tmp_path / "report.md").read_text() == text
    assert "Highest test accuracy: **tuned** (0.7600), ahead of default (0.7400)" in text
    assert "Highest macro F1: **baseline** (0.4000)" in text
    assert "**baseline** is most accurate on them" in text
    assert "Tuned vs default hyperparameters: accuracy +0.0200, macro_f1 +0.0500" in text
    assert "tuned vs the TF-IDF baseline: accuracy +0.0600, macro_f1 -0.0500" in text
    assert "the study took 60.0 min of wall time for 8 trials" in text
    assert "trials by status: completed 3, stopped_by_asha 5" in text
    assert "the baseline fits in 12.0 s" in text
    assert "![size_bins](size_bins.png)" in text and "param_importance" not in text
    assert "| tuned | 0.7600 | 0.3500 |" in text  # comparison table row: accuracy, macro_f1 first

    text = write_report_md(tmp_path, context(
        accuracy=[0.80, 0.74, 0.76], macro_f1=[0.40, 0.30, 0.45], small_accuracy={"baseline": 0.1, "default": 0.1, "tuned": 0.6}))
    assert "Highest test accuracy: **baseline** (0.8000), ahead of tuned (0.7600)" in text
    assert "Highest macro F1: **tuned** (0.4500)" in text
    assert "**tuned** is most accurate on them" in text


def test_report_handles_partial_context(tmp_path):
    ctx = {"comparison": comparison([0.7, 0.8, 0.9], [0.1, 0.2, 0.3]).drop(index=["default"])}
    text = write_report_md(tmp_path, ctx)
    assert "Highest test accuracy: **tuned**" in text
    assert "Tuned vs default" not in text  # needs both rows
    assert "Compute" not in text


def test_write_tables_rounds_and_keeps_meaningful_index(tmp_path):
    write_tables(tmp_path, {"comparison": comparison([0.123456, 0.2, 0.3], [0.1, 0.2, 0.3]),
                            "plain": pd.DataFrame({"x": [1.0 / 3]})})
    assert (tmp_path / "comparison.csv").read_text().splitlines()[1].startswith("baseline,0.1235,")
    assert (tmp_path / "plain.csv").read_text() == "x\n0.3333\n"


def assert_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_pngs_and_skip_empty_input(tmp_path):
    labels = ["A", "B", "C"]
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    predictions = {"baseline": np.array([0, 2, 1, 2, 2, 2, 2]), "tuned": np.array([0, 0, 1, 2, 2, 2, 2])}
    counts = {"A": 5, "B": 50, "C": 20000}
    per_category = per_category_table(y_true, predictions, labels, counts)
    bins = size_bin_table(y_true, predictions, labels, counts)
    pairs = pd.DataFrame({"true": ["B", "A"], "predicted": ["C", "C"], "count": [1, 1], "share_of_true": [0.5, 0.5]})
    history = pd.DataFrame({
        "trial_id": ["t1"] * 3 + ["t2"] + ["t3"] * 2 + ["t4"],
        "epoch": [1, 2, 3, 1, 1, 2, 1],
        "val_macro_f1": [0.1, 0.2, 0.3, 0.05, 0.1, 0.15, np.nan],
        "status": ["completed"] * 3 + ["stopped_by_asha"] + ["stopped_by_patience"] * 2 + ["error"],
    })

    files = [
        plot_size_bins(tmp_path, bins, list(predictions)),
        plot_category_f1(tmp_path, per_category, list(predictions)),
        plot_confusion_pairs(tmp_path, pairs, "tuned"),
        plot_learning_curves(tmp_path, history, "val_macro_f1"),
    ]
    assert files == ["size_bins.png", "category_f1.png", "confusion_pairs_tuned.png", "learning_curves_val_macro_f1.png"]
    for name in files:
        assert_png(tmp_path / name)

    assert plot_size_bins(tmp_path, bins.assign(test_papers=0), list(predictions)) is None
    assert plot_category_f1(tmp_path, per_category.iloc[:0], list(predictions)) is None
    assert plot_confusion_pairs(tmp_path, pairs.iloc[:0], "tuned") is None
    assert plot_learning_curves(tmp_path, history.iloc[:0], "val_macro_f1") is None


def trials(n, seed=0):
    rng = np.random.default_rng(seed)
    learning_rate = 10 ** rng.uniform(-5, -4, n)
    return pd.DataFrame({
        "learning_rate": learning_rate,
        "batch_size": rng.choice([8, 16, 32], n),
        "loss": rng.choice(["ce", "weighted_ce"], n),
        "epochs": [3] * n,  # never varies: not a parameter to rank
        "val_macro_f1": -np.log10(learning_rate) / 10,  # only the learning rate matters
        "status": ["completed"] * n,
    })


def test_param_importance_needs_enough_trials(tmp_path):
    params = ["learning_rate", "batch_size", "loss", "epochs"]
    assert plot_param_importance(tmp_path, trials(2), params, "val_macro_f1", "max") is None
    assert plot_param_importance(tmp_path, trials(8)[["learning_rate", "epochs", "val_macro_f1"]],
                                 ["learning_rate", "epochs"], "val_macro_f1", "max") is None  # one varying param

    importances = param_importances(trials(12), params, "val_macro_f1", "max")
    assert set(importances) == {"learning_rate", "batch_size", "loss"}
    assert max(importances, key=importances.get) == "learning_rate"
    assert sum(importances.values()) == pytest.approx(1.0)
    assert plot_param_importance(tmp_path, trials(12), params, "val_macro_f1", "max") == "param_importance.png"
    assert_png(tmp_path / "param_importance.png")
