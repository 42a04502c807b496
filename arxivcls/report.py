"""The files of a results directory: csv tables, png plots and report.md, all built from the numbers.

Plots draw on matplotlib Figure objects (Agg canvas when saved as png) and never touch pyplot,
so nothing needs a display and nothing leaks global figure state. Every file is written
atomically, so re-running `evaluate` on a live results directory never leaves half a file.
"""
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from arxivcls.files import atomic_path, atomic_write_text
from arxivcls.metrics import SIZE_BIN_LABELS

COMPARISON_COLUMNS = ["accuracy", "macro_f1", "weighted_f1", "top3_accuracy", "ece", "mean_confidence", "inference_seconds"]
SMALL_BINS = SIZE_BIN_LABELS[:2]  # categories with at most 100 training papers
# Ray Tune reports TERMINATED both for trials that ran to the end and for those ASHA stopped,
# so tuning.py labels each trial itself: completed | stopped_by_asha (or stopped_by_halving, the
# synchronous rule) | stopped_by_patience | error.
ASHA_STATUSES = {"stopped_by_asha", "stopped_by_halving", "stopped_early", "pruned"}
PATIENCE_STATUSES = {"stopped_by_patience"}
ERROR_STATUSES = {"error", "failed"}


# ---------------------------------------------------------------- tables

def write_tables(out_dir, tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        keep_index = not isinstance(table.index, pd.RangeIndex)  # e.g. comparison is indexed by model
        atomic_write_text(Path(out_dir) / f"{name}.csv", table.to_csv(index=keep_index, float_format="%.4f"))


# ---------------------------------------------------------------- plots

def _save(fig: Figure, out_dir, filename: str) -> str:
    with atomic_path(Path(out_dir) / filename) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return filename


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def plot_size_bins(out_dir, size_bins: pd.DataFrame, models: list[str]) -> str | None:
    """Grouped bars: test accuracy per training-count bin, one bar per model."""
    if size_bins is None or not len(models):
        return None
    rows = size_bins[size_bins.test_papers > 0]
    if rows.empty:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        ax.bar(x + (i - (len(models) - 1) / 2) * width, rows[f"{model}_accuracy"], width, label=model)
    ax.set_xticks(x, [f"{b}\n{c} cat., {p} papers" for b, c, p in zip(rows.size_bin, rows.categories, rows.test_papers)])
    ax.set_xlabel("training papers per category")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Accuracy by category size")
    return _save(fig, out_dir, "size_bins.png")


def plot_category_f1(out_dir, per_category: pd.DataFrame, models: list[str]) -> str | None:
    """Per-category test F1 against training count (log x): where the rare classes fall."""
    if per_category is None or per_category.empty or not len(models):
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    drawn = 0
    for model in models:
        rows = per_category[(per_category.train_count > 0) & per_category[f"{model}_f1"].notna()]
        ax.scatter(rows.train_count, rows[f"{model}_f1"], s=18, alpha=0.6, label=model)
        drawn += len(rows)
    if drawn == 0:
        return None
    ax.set_xscale("log")
    ax.set_xlabel("training papers in the category (log)")
    ax.set_ylabel("test F1")
    ax.set_ylim(-0.03, 1.03)
    ax.legend()
    ax.set_title("Per-category F1 vs category size")
    return _save(fig, out_dir, "category_f1.png")


def plot_confusion_pairs(out_dir, pairs: pd.DataFrame, model: str) -> str | None:
    if pairs is None or pairs.empty:
        return None
    fig = Figure(figsize=(7, 0.35 * len(pairs) + 1.2))
    ax = fig.add_subplot()
    rows = pairs.iloc[::-1]  # largest on top
    ax.barh([f"{t} → {p}" for t, p in zip(rows.true, rows.predicted)], rows["count"])
    for y, (count, share) in enumerate(zip(rows["count"], rows.share_of_true)):
        ax.text(count, y, f" {share:.0%} of true", va="center", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("test papers")
    ax.set_title(f"Most frequent confusions: {model} (true → predicted)")
    return _save(fig, out_dir, f"confusion_pairs_{_safe_name(model)}.png")


def _status_kind(status) -> str:
    status = str(status).lower()
    for kind, statuses in (("asha", ASHA_STATUSES), ("patience", PATIENCE_STATUSES), ("error", ERROR_STATUSES)):
        if status in statuses:
            return kind
    return "ran"


# kind -> (line style, marker at the last epoch)
TRIAL_STYLES = {"ran": ("-", "."), "asha": ("--", "x"), "patience": ("-.", "s"), "error": (":", "*")}


def plot_learning_curves(out_dir, history: pd.DataFrame, metric: str) -> str | None:
    """One line per trial over epochs, styled by how it ended: ASHA stops dashed, ending in an x."""
    if history is None or history.empty or metric not in history or history[metric].notna().sum() == 0:
        return None
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(history.trial_id.nunique())]
    status_counts: dict[str, int] = {}
    for color, (trial_id, trial) in zip(colors, history.groupby("trial_id", sort=True)):
        trial = trial.dropna(subset=[metric]).sort_values("epoch")
        if trial.empty:
            continue
        status = str(trial.status.iloc[-1])
        kind = _status_kind(status)
        status_counts[status] = status_counts.get(status, 0) + 1
        line, end = TRIAL_STYLES[kind]
        ax.plot(trial.epoch, trial[metric], line, color=color, marker=".", alpha=0.8)
        ax.plot(trial.epoch.iloc[-1], trial[metric].iloc[-1], end, color=color, markersize=9, mew=2)
    handles = [Line2D([], [], color="gray", linestyle=TRIAL_STYLES[_status_kind(s)][0],
                      marker=TRIAL_STYLES[_status_kind(s)][1], markersize=8, label=f"{s} ({n} trials)")
               for s, n in sorted(status_counts.items())]
    ax.legend(handles=handles, title="trial status")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"Learning curves: {metric} per trial")
    return _save(fig, out_dir, f"learning_curves_{_safe_name(metric)}.png")


def _distribution(values: pd.Series):
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return optuna.distributions.CategoricalDistribution(sorted({_plain(v) for v in values}, key=str))
    low, high = float(values.min()), float(values.max())
    if all(float(v).is_integer() for v in values):
        return optuna.distributions.IntDistribution(int(low), int(high))
    # learning rates and weight decays span decades; fANOVA should see them on a log scale
    return optuna.distributions.FloatDistribution(low, high, log=low > 0 and high / low >= 10)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _param_value(value, distribution):
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return int(value)
    if isinstance(distribution, optuna.distributions.FloatDistribution):
        return float(value)
    return _plain(value)


def param_importances(trials: pd.DataFrame, param_columns: list[str], metric: str, mode: str) -> dict[str, float] | None:
    """fANOVA importances of the hyperparameters that varied, or None with too little to go on."""
    if trials is None or trials.empty or metric not in trials:
        return None
    values = pd.to_numeric(trials[metric], errors="coerce")
    usable = np.isfinite(values)
    if "status" in trials:
        usable &= trials.status.map(lambda s: _status_kind(s) != "error")
    rows = trials[usable]
    varying = [c for c in param_columns if c in rows and rows[c].dropna().nunique() > 1]
    if len(rows) < 4 or len(varying) < 2:
        return None
    distributions = {c: _distribution(rows[c].dropna()) for c in varying}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for _, row in rows.iterrows():
        params = {c: _param_value(row[c], distributions[c]) for c in varying if not pd.isna(row[c])}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={c: distributions[c] for c in params}, value=float(row[metric])))
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying)
    except (ValueError, RuntimeError):  # e.g. conditional params leave too few trials holding all of them
        return None


def plot_param_importance(out_dir, trials: pd.DataFrame, param_columns: list[str], metric: str, mode: str) -> str | None:
    importances = param_importances(trials, param_columns, metric, mode)
    if not importances:
        return None
    names = list(importances)[::-1]  # most important on top
    fig = Figure(figsize=(7, 0.4 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"fANOVA importance for {metric} (sums to 1)")
    ax.set_title(f"Hyperparameter importance ({len(trials)} trials)")
    return _save(fig, out_dir, "param_importance.png")


# ---------------------------------------------------------------- report.md

def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(table: pd.DataFrame, index_name: str | None = None) -> str:
    if index_name is not None:
        table = table.rename_axis(index_name).reset_index()
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def format_seconds(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _winner_line(comparison: pd.DataFrame, metric: str, title: str) -> str | None:
    if metric not in comparison or comparison[metric].notna().sum() == 0:
        return None
    ranked = comparison[metric].dropna().sort_values(ascending=False, kind="stable")
    best, best_value = ranked.index[0], ranked.iloc[0]
    if len(ranked) == 1:
        return f"- {title}: **{best}** ({best_value:.4f}), the only model with this metric."
    runner, runner_value = ranked.index[1], ranked.iloc[1]
    return (f"- {title}: **{best}** ({best_value:.4f}), ahead of {runner} ({runner_value:.4f}) "
            f"by {best_value - runner_value:+.4f}.")


def _small_class_lines(models: list[str], size_bins, per_category) -> list[str]:
    if size_bins is None or size_bins.empty:
        return []
    small = size_bins[size_bins.size_bin.isin(SMALL_BINS) & (size_bins.test_papers > 0)]
    if small.empty:
        return ["- Small classes (at most 100 training papers): no test papers, so they cannot be judged."]
    papers = small.test_papers.sum()
    accuracy = {m: float((small[f"{m}_accuracy"] * small.test_papers).sum() / papers)
                for m in models if f"{m}_accuracy" in small}
    if not accuracy:
        return []
    best = max(accuracy, key=accuracy.get)
    line = (f"- Small classes (at most 100 training papers; {int(small.categories.sum())} categories, "
            f"{int(papers)} test papers): **{best}** is most accurate on them ("
            + ", ".join(f"{m} {a:.4f}" for m, a in sorted(accuracy.items(), key=lambda kv: -kv[1])) + ")")
    if per_category is not None and not per_category.empty:
        rows = per_category[per_category.size_bin.isin(SMALL_BINS)]
        macro_f1 = {m: rows[f"{m}_f1"].mean() for m in models if f"{m}_f1" in rows}
        macro_f1 = {m: v for m, v in macro_f1.items() if np.isfinite(v)}
        if macro_f1:
            best_f1 = max(macro_f1, key=macro_f1.get)
            line += (f"; by macro F1 over those categories **{best_f1}** leads ("
                     + ", ".join(f"{m} {v:.4f}" for m, v in macro_f1.items()) + ")")
    return [line + "."]


def _delta_text(comparison: pd.DataFrame, model: str, reference: str) -> str:
    metrics = [m for m in ["accuracy", "macro_f1", "weighted_f1", "top3_accuracy", "ece"] if m in comparison]
    return ", ".join(f"{m} {comparison.at[model, m] - comparison.at[reference, m]:+.4f}" for m in metrics)


def _tuning_line(comparison: pd.DataFrame) -> list[str]:
    if not {"default", "tuned"} <= set(comparison.index) or not {"accuracy", "macro_f1"} <= set(comparison):
        return []
    gains = [comparison.at["tuned", m] - comparison.at["default", m] for m in ("accuracy", "macro_f1")]
    if all(g > 0 for g in gains):
        verdict = "tuning improved both accuracy and macro F1"
    elif all(g <= 0 for g in gains):
        verdict = "tuning did not beat the default hyperparameters on accuracy or macro F1"
    else:
        verdict = "tuning traded one of accuracy and macro F1 against the other"
    return [f"- Tuned vs default hyperparameters: {_delta_text(comparison, 'tuned', 'default')} "
            f"(ece: lower is better); {verdict}."]


def _baseline_lines(comparison: pd.DataFrame) -> list[str]:
    if "baseline" not in comparison.index or "macro_f1" not in comparison:
        return []
    lines = []
    for model in comparison.index.drop("baseline"):
        gain = comparison.at[model, "macro_f1"] - comparison.at["baseline", "macro_f1"]
        verdict = "beats" if gain > 0 else "does not beat"
        lines.append(f"- {model} vs the TF-IDF baseline: {_delta_text(comparison, model, 'baseline')}; "
                     f"it {verdict} the baseline on macro F1.")
    return lines


def _cost_line(comparison: pd.DataFrame, study: dict, baseline_fit_seconds) -> list[str]:
    parts = []
    wall = study.get("wall_seconds")
    if wall is not None:
        trials = study.get("num_trials")
        parts.append(f"the study took {format_seconds(wall)} of wall time"
                     + (f" for {trials} trials" if trials is not None else ""))
    by_status = study.get("trials_by_status")
    if by_status:
        parts.append("trials by status: " + ", ".join(f"{k} {v}" for k, v in by_status.items()))
    if baseline_fit_seconds is not None:
        parts.append(f"the baseline fits in {format_seconds(baseline_fit_seconds)}")
        if wall:
            parts.append(f"so the study cost {wall / max(baseline_fit_seconds, 1e-9):.0f}x the baseline's fit")
    if "inference_seconds" in comparison:
        parts.append("test-set inference: " + ", ".join(
            f"{m} {format_seconds(s)}" for m, s in comparison.inference_seconds.items()))
    return ["- Compute: " + "; ".join(parts) + "."] if parts else []


def conclusions(context: dict) -> list[str]:
    comparison = context["comparison"]
    study = context.get("study") or {}
    models = list(comparison.index)
    lines = [
        _winner_line(comparison, "accuracy", "Highest test accuracy"),
        _winner_line(comparison, "macro_f1", "Highest macro F1"),
    ]
    lines += _small_class_lines(models, context.get("size_bins"), context.get("per_category"))
    lines += _tuning_line(comparison)
    lines += _baseline_lines(comparison)
    lines += _cost_line(comparison, study, context.get("baseline_fit_seconds", study.get("baseline_fit_seconds")))
    return [line for line in lines if line]


def _study_lines(study: dict) -> list[str]:
    lines = []
    for key, value in study.items():
        if key == "wall_seconds":
            lines.append(f"- wall time: {format_seconds(value)}")
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items() if not isinstance(v, (dict, list)))
            if text and len(text) < 400:  # whole configs belong in study.json, not here
                lines.append(f"- {key}: {text}")
        elif not isinstance(value, list):
            lines.append(f"- {key}: {_fmt(value)}")
    return lines


def write_report_md(out_dir, context: dict) -> str:
    comparison = context["comparison"]
    models = list(comparison.index)
    focus = "tuned" if "tuned" in models else models[0]
    md = [f"# {context.get('study_name', 'study')}: arXiv primary-category classifiers", ""]
    md += ["## Conclusions", ""] + conclusions(context) + [""]

    columns = [c for c in COMPARISON_COLUMNS if c in comparison] or list(comparison.columns)
    md += ["## Test-set comparison", "", markdown_table(comparison[columns], index_name="model"), ""]

    size_bins = context.get("size_bins")
    if size_bins is not None and not size_bins.empty:
        md += ["## Accuracy by category size (training papers per category)", "", markdown_table(size_bins), ""]

    pairs = context.get("confusion_pairs")
    if isinstance(pairs, dict):  # model -> table
        focus_pairs = focus if focus in pairs else next(iter(pairs), None)
        pairs = pairs.get(focus_pairs)
    else:
        focus_pairs = focus
    if pairs is not None and not pairs.empty:
        md += [f"## Most frequent confusions: {focus_pairs}", "", markdown_table(pairs), ""]

    differences = context.get("differences")
    if differences is not None and not differences.empty:
        compared = [c[: -len("_f1")] for c in differences.columns if c.endswith("_f1")]
        md += [f"## Categories where {' and '.join(compared)} differ most (F1)", "", markdown_table(differences), ""]

    study_lines = _study_lines(context.get("study") or {})
    if study_lines:
        md += ["## Study", ""] + study_lines + [""]

    plots = {name: file for name, file in (context.get("plots") or {}).items() if file}
    if plots:
        md += ["## Plots", ""]
        for name, filename in plots.items():
            md += [f"### {name.replace('_', ' ')}", "", f"![{name}]({filename})", ""]

    text = "\n".join(md)
    atomic_write_text(Path(out_dir) / "report.md", text)
    return text
