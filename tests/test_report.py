import numpy as np
import pandas as pd
import pytest

from arxivcls.metrics import per_category_table, size_bin_table
from arxivcls.plots import (
    importance_absent_reason, param_importances, plot_category_f1, plot_confusion_heatmap, plot_confusion_pairs,
    plot_learning_curves, plot_optimization_history, plot_param_importance, plot_reliability, plot_size_bins,
)
from arxivcls.report import write_report_md, write_tables

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


def intervals(table, half_width=0.03):
    return pd.DataFrame({**{f"{m}_low": table[m] - half_width for m in ("accuracy", "macro_f1")},
                         **{f"{m}_high": table[m] + half_width for m in ("accuracy", "macro_f1")}})


def differences(rows):
    return pd.DataFrame([{"model": m, "reference": r, "metric": metric, "difference": d, "low": lo, "high": hi, "verdict": v}
                         for m, r, metric, d, lo, hi, v in rows])


def context(accuracy, macro_f1, small_accuracy):
    table = comparison(accuracy, macro_f1)
    return {
        "study_name": "unit",
        "comparison": table,
        "intervals": intervals(table),
        "differences": differences([
            ("tuned", "default", "accuracy", 0.02, -0.01, 0.05, "no significant difference"),
            ("tuned", "baseline", "macro_f1", -0.05, -0.09, -0.01, "worse"),
        ]),
        "identical": {"tuned+logit_adj": ("tuned", "validation chose tau 0 (no adjustment)")},
        "test_papers": 300,
        "size_bins": size_bins(small_accuracy),
        "plots": {"size_bins": "size_bins.png", "param_importance": None},
        "absent_plots": {"param_importance": "parameter importance needs at least 8 trials"},
        "study": {"wall_seconds": 3600.0, "num_trials": 8, "trials_by_status": {"completed": 3, "stopped_by_asha": 5}},
        "baseline_fit_seconds": 12.0,
    }


def test_report_states_intervals_and_paired_verdicts(tmp_path):
    text = write_report_md(tmp_path, context(
        accuracy=[0.70, 0.74, 0.76], macro_f1=[0.40, 0.30, 0.35], small_accuracy={"baseline": 0.5, "default": 0.1, "tuned": 0.2}))
    assert (tmp_path / "report.md").read_text() == text
    assert "300 test papers: one paper is 0.33 accuracy points" in text
    assert "Highest test accuracy: tuned (0.760, 95% interval [0.730, 0.790])" in text
    assert "tuned vs default (paired, 95% interval): accuracy +0.020 [-0.010, +0.050]: no significant difference." in text
    assert "tuned vs baseline (paired, 95% interval): macro F1 -0.050 [-0.090, -0.010]: **tuned is worse**." in text
    assert "tuned+logit_adj = tuned: validation chose tau 0 (no adjustment); reported once, as tuned." in text
    assert "ahead of" not in text and "beats" not in text  # no win without its interval
    assert "0.760 [0.730, 0.790] | 0.350 [0.320, 0.380] | 0.7400" in text  # comparison row: accuracy, macro F1 first
    assert "the study took 60.0 min for 8 trials" in text and "trials by status: completed 3, stopped_by_asha 5" in text
    assert "the tuned baseline fits in 12.0 s" in text
    assert "![size_bins](size_bins.png)" in text
    assert "- param importance: not drawn: parameter importance needs at least 8 trials." in text


def test_report_lists_every_trial_and_calls_out_the_best(tmp_path):
    ctx = context([0.7, 0.8, 0.9], [0.1, 0.2, 0.3], {"baseline": 0.5, "default": 0.1, "tuned": 0.2})
    ctx["trials"] = pd.DataFrame({"trial_id": ["a1", "b2", "c3"], "is_default": [True, False, False],
                                  "p_learning_rate": [5e-5, 3e-4, 1e-4], "status": ["completed", "completed", "stopped_by_halving"],
                                  "epochs_run": [2, 2, 1], "best_metric": [0.30, 0.41, 0.20]})
    ctx["metric"] = "val_macro_f1"
    text = write_report_md(tmp_path, ctx)
    assert "Best configuration: trial b2 (val_macro_f1 0.4100): learning_rate=0.0003." in text
    assert "**b2** (best)" in text and "stopped_by_halving" in text


def test_report_handles_partial_context(tmp_path):
    ctx = {"comparison": comparison([0.7, 0.8, 0.9], [0.1, 0.2, 0.3]).drop(index=["default"])}
    text = write_report_md(tmp_path, ctx)
    assert "Highest test accuracy: tuned (0.900)" in text
    assert "vs default" not in text
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

    trials = pd.DataFrame({"trial_id": ["t1", "t2", "t3"], "status": ["completed", "stopped_by_halving", "completed"],
                           "best_metric": [0.2, 0.1, 0.3]})
    confidence = np.array([0.9, 0.6, 0.8, 0.55, 0.7, 0.95, 0.4])
    more = [
        plot_optimization_history(tmp_path, trials, "val_macro_f1", "max"),
        plot_confusion_heatmap(tmp_path, y_true, predictions["tuned"], labels, "tuned"),
        plot_reliability(tmp_path, {"tuned": (confidence, predictions["tuned"] == y_true)}),
    ]
    assert more == ["optimization_history.png", "confusion_matrix_tuned.png", "reliability.png"]
    for name in more:
        assert_png(tmp_path / name)
    assert plot_optimization_history(tmp_path, trials.iloc[:0], "val_macro_f1", "max") is None


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


def test_param_importance_is_drawn_only_from_enough_full_budget_trials():
    assert "at least 8 trials that ran their full budget; this study has 7" in importance_absent_reason(trials(7))
    stopped = trials(12).assign(status=["completed"] * 6 + ["stopped_by_asha"] * 6)
    assert "this study has 6" in importance_absent_reason(stopped)
    assert importance_absent_reason(trials(8)) is None


def test_report_states_what_each_model_read_the_baseline_trials_and_both_gaps(tmp_path):
    ctx = context([0.70, 0.74, 0.76], [0.40, 0.30, 0.35], {"baseline": 0.5, "default": 0.1, "tuned": 0.2})
    ctx["comparison"] = pd.concat([ctx["comparison"], ctx["comparison"].loc[["baseline"]].rename(index={"baseline": "baseline_truncated"})])
    ctx["readings"] = {"tuned": {"read_tokens": 95.1, "read_unit": "tokens", "read_chars": 478.2, "read_truncated": 0.968,
                                 "max_length": 96},
                       "baseline": {"read_tokens": 181.0, "read_unit": "words", "read_chars": 1316.0, "read_truncated": 0.0}}
    ctx["control"] = {"name": "baseline_truncated", "max_length": 96}
    ctx["differences"] = differences([
        ("tuned", "baseline", "macro_f1", -0.05, -0.09, -0.01, "worse"),
        ("tuned", "baseline_truncated", "macro_f1", 0.01, -0.03, 0.05, "no significant difference"),
        ("baseline_truncated", "baseline", "macro_f1", -0.06, -0.10, -0.02, "worse"),
    ])
    ctx["metric"], ctx["mode"] = "val_macro_f1", "max"
    ctx["baseline_trials"] = pd.DataFrame({"trial": [0, 1], "default": [True, False], "p_classifier": ["logistic", "svm"],
                                           "p_alpha": [5e-6, 1.2e-4], "status": ["completed"] * 2,
                                           "val_macro_f1": [0.69, 0.75], "seconds": [1.79, 0.61]})
    text = write_report_md(tmp_path, ctx)
    assert "95.1 tokens, 478 chars; 97% cut at 96 tokens" in text
    assert "| 181.0 words, 1316 chars " in text and "text read per paper" in text
    assert ("- Model or text (macro F1, paired 95% intervals): tuned vs baseline at full text -0.050 [-0.090, -0.010], "
            "baseline better; at the transformer's text (its first 96 tokens, decoded), tuned vs baseline_truncated "
            "+0.010 [-0.030, +0.050], no significant difference; the text alone, baseline_truncated vs baseline, "
            "-0.060 [-0.100, -0.020], baseline better.") in text
    assert "Model or text (accuracy" not in text  # no accuracy differences given: nothing said about them
    assert ("2 trials of Optuna TPE on the validation split, objective val_macro_f1; trial 0 is its default settings "
            "(val_macro_f1 0.6900). Best: trial 1 (val_macro_f1 0.7500): classifier=svm, alpha=0.00012.") in text
    assert "## Baseline trials" in text and "| **1** (best) | False     | svm" in text and "| 1.79 " in text
