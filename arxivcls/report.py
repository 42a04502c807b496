"""The tables and report.md of a results directory, all built from the numbers (plots: plots.py).

Every claim in the conclusions carries its 95% bootstrap interval; a difference is called a win
only when its paired interval excludes 0. Every file is written atomically, so re-running
`evaluate` on a live results directory never leaves half a file.
"""
import math
from pathlib import Path

import numpy as np
import pandas as pd

from arxivcls.files import atomic_write_text
from arxivcls.metrics import SIZE_BIN_LABELS

COMPARISON_COLUMNS = ["accuracy", "crosslist_accuracy", "archive_accuracy", "macro_f1", "weighted_f1", "top3_accuracy", "ece",
                      "mean_confidence", "inference_seconds"]
SMALL_BINS = SIZE_BIN_LABELS[:2]  # categories with at most 100 training papers
LABELS = {"accuracy": "accuracy", "crosslist_accuracy": "cross-list accuracy", "archive_accuracy": "archive accuracy",
          "macro_f1": "macro F1", "weighted_f1": "weighted F1", "top3_accuracy": "top-3 accuracy",
          "ece": "ECE", "mean_confidence": "mean confidence", "inference_seconds": "inference s"}


def write_tables(out_dir, tables: dict[str, pd.DataFrame]) -> None:
    for name, table in tables.items():
        keep_index = not isinstance(table.index, pd.RangeIndex)  # e.g. comparison is indexed by model
        atomic_write_text(Path(out_dir) / f"{name}.csv", table.to_csv(index=keep_index, float_format="%.4f"))


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
    return table.map(_fmt).to_markdown(index=False, disable_numparse=True)


def format_seconds(seconds) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "n/a"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def with_interval(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def comparison_with_intervals(comparison: pd.DataFrame, intervals: pd.DataFrame | None,
                              readings: dict | None = None) -> pd.DataFrame:
    """The comparison table, each metric that has an interval written `value [low, high]`, and with
    `readings` (arxivcls.reading) what each model read of each paper."""
    from arxivcls.reading import reading_text

    columns = [c for c in COMPARISON_COLUMNS if c in comparison] or list(comparison.columns)
    table = comparison[columns].astype(object)
    if readings:
        table.insert(0, "text_read", [reading_text(readings.get(model, {})) for model in table.index])
    if "inference_seconds" in table:
        table["inference_seconds"] = comparison.inference_seconds.map(lambda v: "n/a" if pd.isna(v) else f"{v:.1f}")
    if "mean_confidence" in table:
        table["mean_confidence"] = comparison.mean_confidence.map(lambda v: f"{v:.3f}")
    for model in table.index:
        for metric in columns:
            if intervals is not None and model in intervals.index and f"{metric}_low" in intervals:
                table.at[model, metric] = with_interval(comparison.at[model, metric], intervals.at[model, f"{metric}_low"],
                                                        intervals.at[model, f"{metric}_high"])
    return table.rename(columns={**LABELS, "text_read": "text read per paper"})


def _difference_line(row) -> str:
    verdict = {"better": f"**{row.model} is better**", "worse": f"**{row.model} is worse**",
               "no significant difference": "no significant difference"}[row.verdict]
    return f"{LABELS.get(row.metric, row.metric)} {row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}]: {verdict}"


def difference_lines(differences: pd.DataFrame | None, identical: dict) -> list[str]:
    """One line per compared pair: every metric's paired difference, interval and verdict."""
    lines = [f"- {copy} = {model}: {why}; reported once, as {model}." for copy, (model, why) in identical.items()]
    if differences is None or differences.empty:
        return lines
    for (model, reference), rows in differences.groupby(["model", "reference"], sort=False):
        lines.append(f"- {model} vs {reference} (paired, 95% interval): "
                     + "; ".join(_difference_line(row) for row in rows.itertuples()) + ".")
    return lines


def best_model_line(comparison: pd.DataFrame, intervals: pd.DataFrame | None, metric: str, papers: str = "test") -> str | None:
    if metric not in comparison:
        return None
    best = comparison[metric].idxmax()
    text = f"- Highest {papers} {LABELS[metric]}: {best} ({comparison.at[best, metric]:.3f}"
    if intervals is not None and best in intervals.index:
        text += f", 95% interval [{intervals.at[best, metric + '_low']:.3f}, {intervals.at[best, metric + '_high']:.3f}]"
    return text + "); the paired differences below say which gaps are real."


def _small_class_line(size_bins) -> list[str]:
    if size_bins is None or size_bins.empty:
        return []
    small = size_bins[size_bins.size_bin.isin(SMALL_BINS) & (size_bins.test_papers > 0)]
    if small.empty or small.test_papers.sum() == size_bins.test_papers.sum():  # no larger classes to compare with
        return []
    models = [c[: -len("_accuracy")] for c in small.columns if c.endswith("_accuracy")]
    papers = small.test_papers.sum()
    accuracy = {m: float((small[f"{m}_accuracy"] * small.test_papers).sum() / papers) for m in models}
    return [f"- Small classes (at most 100 training papers; {int(small.categories.sum())} categories, {int(papers)} "
            "test papers), accuracy: " + ", ".join(f"{m} {a:.3f}" for m, a in sorted(accuracy.items(), key=lambda kv: -kv[1]))
            + " (too few papers for intervals to separate them)."]


def _cost_line(comparison: pd.DataFrame, study: dict, baseline_fit_seconds, baseline_search_seconds=None) -> list[str]:
    parts = []
    if study.get("wall_seconds") is not None:
        parts.append(f"the study took {format_seconds(study['wall_seconds'])} for {study.get('num_trials', '?')} trials")
    if study.get("trials_by_status"):
        parts.append("trials by status: " + ", ".join(f"{k} {v}" for k, v in study["trials_by_status"].items()))
    if baseline_search_seconds is not None:
        parts.append(f"the baseline's study took {format_seconds(baseline_search_seconds)}")
    if baseline_fit_seconds is not None:
        parts.append(f"the tuned baseline fits in {format_seconds(baseline_fit_seconds)}")
    if "inference_seconds" in comparison:
        parts.append("test-set inference: " + ", ".join(f"{m} {format_seconds(s)}" for m, s in
                                                          comparison.inference_seconds.dropna().items()))
    return ["- Compute: " + "; ".join(parts) + "."] if parts else []


def coverage_lines(coverage: pd.DataFrame | None, covered: dict | None) -> list[str]:
    """Per model, the papers it can get exactly right; and the comparison where every model can."""
    if coverage is None or coverage.empty:
        return []
    lines = [f"- Coverage of {model}: {int(row.covered_papers)} of {int(row.papers)} papers ({row.coverage:.1%}) have a primary "
             f"category it was trained on; the other {int(row.unseen_papers)}, in {int(row.unseen_categories)} categories "
             "it never saw, count as wrong for exact accuracy (a cross-list or archive hit still counts)."
             for model, row in coverage.iterrows()]
    if covered:
        accuracy = covered["comparison"].accuracy
        lines.append(f"- On the {covered['papers']} papers whose primary category every model knows, accuracy: "
                     + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.sort_values(ascending=False).items()) + ".")
    return lines


def conclusions(context: dict) -> list[str]:
    comparison, intervals = context["comparison"], context.get("intervals")
    study = context.get("study") or {}
    papers = context.get("papers_kind", "test")
    lines = []
    if context.get("test_papers"):
        n = context["test_papers"]
        lines.append(f"- {n} {papers} papers: one paper is {100 / n:.2g} accuracy points. Intervals: 95% bootstrap over "
                     f"{papers} papers; differences: paired bootstrap (the same resampled papers for both models).")
    if "crosslist_accuracy" in comparison:
        lines.append("- Accuracy counts the primary category only; cross-list accuracy counts a prediction right when it "
                     "is any category the paper is listed in; archive accuracy, when it is in the primary's archive "
                     "(cs, math, astro-ph, ...; aliases such as math.MP = math-ph and legacy codes mapped by the taxonomy).")
    lines += coverage_lines(context.get("coverage"), context.get("covered"))
    lines += [best_model_line(comparison, intervals, m, papers) for m in ("accuracy", "crosslist_accuracy", "macro_f1")]
    lines += baseline_lines(context.get("baseline_trials"), context.get("metric", "metric"), context.get("mode", "max"))
    lines += text_gap_lines(context.get("differences"), context.get("control"))
    lines += difference_lines(context.get("differences"), context.get("identical") or {})
    lines += _small_class_line(context.get("size_bins"))
    lines += _cost_line(comparison, study, context.get("baseline_fit_seconds"), context.get("baseline_search_seconds"))
    return [line for line in lines if line]


def _best_baseline_trial(trials: pd.DataFrame, metric: str, mode: str):
    done = trials[trials.status == "completed"]
    return None if done.empty else (done[metric].idxmin() if mode == "min" else done[metric].idxmax())


def _setting(row, params: list[str]) -> str:
    return ", ".join(f"{p[2:]}={row[p]:.3g}" if isinstance(row[p], float) else f"{p[2:]}={row[p]}" for p in params)


def baseline_lines(trials: pd.DataFrame | None, metric: str, mode: str) -> list[str]:
    """How the baseline was tuned and what won."""
    if trials is None or trials.empty:
        return []
    best = _best_baseline_trial(trials, metric, mode)
    params = [c for c in trials.columns if c.startswith("p_")]
    line = (f"- The baseline (TF-IDF + linear) is tuned as the transformer is: {len(trials)} trials of Optuna TPE on the "
            f"validation split, objective {metric}; trial 0 is its default settings ({metric} {trials[metric].iloc[0]:.4f}).")
    if best is not None:
        line += f" Best: trial {trials.trial[best]} ({metric} {trials[metric][best]:.4f}): {_setting(trials.loc[best], params)}."
    return [line]


def text_gap_lines(differences: pd.DataFrame | None, control: dict | None) -> list[str]:
    """The tuned transformer against the tuned baseline at full text and at the transformer's own text."""
    if differences is None or differences.empty or not control:
        return []
    rows = differences.set_index(["model", "reference", "metric"])
    name = control["name"]

    def said(model, reference, metric):
        if (model, reference, metric) not in rows.index:
            return None
        row = rows.loc[(model, reference, metric)]
        verdict = {"better": f"{model} better", "worse": f"{reference} better"}.get(row.verdict, row.verdict)
        return f"{row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}], {verdict}"
    lines = []
    for metric in ("accuracy", "macro_f1"):
        full, equal, text = said("tuned", "baseline", metric), said("tuned", name, metric), said(name, "baseline", metric)
        if full and equal:
            lines.append(f"- Model or text ({LABELS[metric]}, paired 95% intervals): tuned vs baseline at full text {full}; "
                         f"at the transformer's text (its first {control['max_length']} tokens, decoded), tuned vs {name} "
                         f"{equal}" + (f"; the text alone, {name} vs baseline, {text}." if text else "."))
    return lines


def baseline_trial_table(trials: pd.DataFrame, metric: str, mode: str) -> str:
    """Every baseline trial's settings, status, validation score and time."""
    params = [c for c in trials.columns if c.startswith("p_")]
    table = trials[["trial", "default", *params, "status", metric, "seconds"]].copy()
    for p in params:
        table[p] = table[p].map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    table["seconds"] = table.seconds.map(lambda v: f"{v:.2f}")
    best = _best_baseline_trial(trials, metric, mode)
    table["trial"] = [f"**{t}** (best)" if i == best else t for i, t in table.trial.items()]
    return markdown_table(table.rename(columns={**{p: p[2:] for p in params}, "seconds": "s"}))


def trial_table(trials: pd.DataFrame, metric: str) -> tuple[str, str]:
    """Every trial's hyperparameters, budget used, status and score, and a line naming the best."""
    params = [c for c in trials.columns if c.startswith("p_")]
    table = trials[["trial_id", "is_default", *params, "status", "epochs_run", "best_metric"]].copy()
    for p in params:  # learning rates span decades: significant digits, not decimals
        table[p] = table[p].map(lambda v: f"{v:.3g}" if isinstance(v, float) else v)
    table["trial_id"] = [f"**{t}** (best)" if i == trials.best_metric.idxmax() else t for i, t in table.trial_id.items()]
    table = table.rename(columns={**{p: p[2:] for p in params}, "is_default": "default", "epochs_run": "epochs",
                                  "best_metric": f"best {metric}"})
    best = trials.loc[trials.best_metric.idxmax()]
    setting = ", ".join(f"{p[2:]}={best[p]:.3g}" if isinstance(best[p], float) else f"{p[2:]}={best[p]}" for p in params)
    return markdown_table(table), f"Best configuration: trial {best.trial_id} ({metric} {best.best_metric:.4f}): {setting}."


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


def _section(title: str, body: str | None) -> list[str]:
    return [f"## {title}", "", body, ""] if body else []


def coverage_sections(context: dict, unseen_shown: int = 15) -> list[str]:
    """Coverage per model, the categories each never saw, and the comparison on the papers all cover."""
    coverage, unseen, covered = context.get("coverage"), context.get("unseen_categories"), context.get("covered")
    if coverage is None or coverage.empty:
        return []
    md = _section("Coverage (papers whose primary category the model was trained on)", markdown_table(coverage, index_name="model"))
    if unseen is not None and not unseen.empty:
        shown = unseen.groupby("model", sort=False).head(unseen_shown)
        md += _section("Categories a model never saw (papers; all of them in unseen_categories.csv)",
                       "\n".join(f"- {model}: " + ", ".join(f"{c} {n}" for c, n in zip(rows.category, rows.papers))
                                 + (" ..." if (unseen.model == model).sum() > len(rows) else "")
                                 for model, rows in shown.groupby("model", sort=False)))
    if covered:
        body = markdown_table(comparison_with_intervals(covered["comparison"], covered["intervals"]), index_name="model")
        lines = difference_lines(covered.get("differences"), {})
        md += _section(f"Comparison on the {covered['papers']} papers every model covers (95% bootstrap intervals)",
                       body + ("\n\n" + "\n".join(lines) if lines else ""))
    return md


def control_note(control: dict | None) -> str:
    if not control:
        return ""
    return (f"\n\n{control['name']}: the tuned baseline's settings fitted and tested on the text the tuned transformer reads "
            f"of each paper (its tokenizer's first {control['max_length']} tokens, decoded); baseline: the same settings on "
            "the whole text.")


def write_report_md(out_dir, context: dict) -> str:
    comparison = context["comparison"]
    md = [f"# {context.get('study_name', 'study')}: arXiv primary-category classifiers", ""]
    md += ["## Conclusions", ""] + conclusions(context) + [""]
    md += _section(context.get("comparison_title", "Test-set comparison (95% bootstrap intervals)"),
                   markdown_table(comparison_with_intervals(comparison, context.get("intervals"), context.get("readings")),
                                  index_name="model") + control_note(context.get("control")))
    md += coverage_sections(context)
    trials = context.get("trials")
    if trials is not None and not trials.empty and "best_metric" in trials:
        table, best_line = trial_table(trials, context.get("metric", "metric"))
        md += _section("Trials", f"{best_line}\n\n{table}")
    baseline_trials = context.get("baseline_trials")
    if baseline_trials is not None and not baseline_trials.empty:
        md += _section("Baseline trials (TF-IDF + linear; validation split, baseline_trials.csv)",
                       baseline_trial_table(baseline_trials, context.get("metric", "metric"), context.get("mode", "max")))
    focus = "the tuned model" if context.get("focus", "tuned") == "tuned" else context["focus"]
    for key, title in (("size_bins", "Accuracy by category size (training papers per category)"),
                       ("confusion_pairs", f"Most frequent confusions of {focus}"),
                       ("category_differences", f"Categories where {focus} and the baseline differ most (F1)")):
        table = context.get(key)
        if key == "size_bins" and table is not None and "test_papers" in table:
            table = table[table.test_papers > 0]
        md += _section(title, markdown_table(table) if table is not None and not table.empty else None)
    md += _section(context.get("study_title", "Study"), "\n".join(_study_lines(context.get("study") or {})))
    plots = {name: file for name, file in (context.get("plots") or {}).items() if file}
    if plots or context.get("absent_plots"):
        md += ["## Plots", ""]
        for name, filename in plots.items():
            md += [f"### {name.replace('_', ' ')}", "", f"![{name}]({filename})", ""]
        md += [f"- {name.replace('_', ' ')}: not drawn: {why}." for name, why in (context.get("absent_plots") or {}).items()]
    text = "\n".join(md).rstrip() + "\n"
    atomic_write_text(Path(out_dir) / "report.md", text)
    return text
