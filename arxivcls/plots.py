"""The report's plots, drawn on matplotlib Figure objects (Agg canvas when saved as png).

They never touch pyplot, so nothing needs a display and nothing leaks global figure state; every
png is written atomically.
"""
import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from arxivcls.files import atomic_path

# Ray Tune reports TERMINATED both for trials that ran to the end and for those ASHA stopped,
# so the study labels each trial itself: completed | stopped_by_asha (or stopped_by_halving, the
# synchronous rule) | stopped_by_patience | error.
ASHA_STATUSES = {"stopped_by_asha", "stopped_by_halving", "stopped_early", "pruned"}
PATIENCE_STATUSES = {"stopped_by_patience"}
ERROR_STATUSES = {"error", "failed"}


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


def stored_study(storage_url: str | None, study_name: str) -> optuna.Study | None:
    """A study's Optuna study as its searcher kept it (runs/<study>/search/optuna.db), less the trials
    a warm start copied in; None where that storage is not on this machine (results travel without runs/)."""
    if not storage_url or (storage_url.startswith("sqlite:///") and not Path(storage_url.removeprefix("sqlite:///")).is_file()):
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        stored = optuna.load_study(study_name=study_name, storage=storage_url)
    except KeyError:
        return None
    own = optuna.create_study(directions=stored.directions)
    own.add_trials(t for t in stored.get_trials(deepcopy=False) if "warm_start_from" not in t.user_attrs)  # search.WARM_START_ATTR
    return own


def stored_param_importances(study: optuna.Study) -> dict[str, float] | None:
    """fANOVA importances over the study's COMPLETE trials, on the distributions the searcher used
    (log scales and choice sets from the search space, not guessed from the values)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = sorted({name for trial in complete for name in trial.params})
    varying = [name for name in names if len({trial.params.get(name) for trial in complete}) > 1]
    if len(complete) < 4 or len(varying) < 2:
        return None
    try:
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=varying)
    except (ValueError, RuntimeError):
        return None


def plot_param_importance(out_dir, trials: pd.DataFrame, param_columns: list[str], metric: str, mode: str,
                          optuna_study: optuna.Study | None = None) -> str | None:
    """From the study's stored Optuna study when given, else from trials.csv's columns."""
    if optuna_study is not None:
        importances = stored_param_importances(optuna_study)
        counted = f"{len(optuna_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))} completed trials"
    else:
        importances = param_importances(trials, param_columns, metric, mode)
        counted = f"{len(trials)} trials"
    if not importances:
        return None
    names = list(importances)[::-1]  # most important on top
    fig = Figure(figsize=(7, 0.4 * len(names) + 1.2))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"fANOVA importance for {metric} (sums to 1)")
    ax.set_title(f"Hyperparameter importance ({counted})")
    return _save(fig, out_dir, "param_importance.png")




MIN_FULL_BUDGET_TRIALS = 8  # fANOVA on fewer finished trials ranks noise


def importance_absent_reason(trials: pd.DataFrame) -> str | None:
    """Why the study cannot support a parameter-importance plot, or None when it can."""
    finished = int((trials.get("status", pd.Series(dtype=str)) == "completed").sum()) if trials is not None else 0
    if finished < MIN_FULL_BUDGET_TRIALS:
        return (f"parameter importance needs at least {MIN_FULL_BUDGET_TRIALS} trials that ran their full budget; "
                f"this study has {finished}")
    return None


def plot_optimization_history(out_dir, trials: pd.DataFrame, metric: str, mode: str) -> str | None:
    """Each trial's best validation score in the order the search proposed them, and the best so far."""
    if trials is None or trials.empty or "best_metric" not in trials or trials.best_metric.notna().sum() == 0:
        return None
    values = trials.best_metric.to_numpy(dtype=float)
    order = np.arange(1, len(values) + 1)
    best_so_far = (np.fmax if mode == "max" else np.fmin).accumulate(values)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for kind, marker, label in (("ran", "o", "full budget"), ("asha", "x", "stopped early by the scheduler"),
                                ("patience", "s", "stopped by patience"), ("error", "*", "error")):
        mask = np.array([_status_kind(s) == kind for s in trials.status])
        if mask.any():
            ax.scatter(order[mask], values[mask], marker=marker, label=f"trial: {label}")
    ax.step(order, best_so_far, where="post", color="black", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial (order proposed; 1 = the default configuration)")
    ax.set_ylabel(f"best validation {metric}")
    ax.legend()
    ax.set_title("Optimization history")
    return _save(fig, out_dir, "optimization_history.png")


def plot_confusion_heatmap(out_dir, y_true, y_pred, label_names: list[str], model: str, top: int = 12) -> str | None:
    """Row-normalised confusion matrix over the `top` categories with the most test papers."""
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return None
    largest = np.argsort(-np.bincount(y_true, minlength=len(label_names)), kind="stable")[:top]
    matrix = confusion_matrix(y_true, y_pred, labels=largest).astype(float)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    names = [label_names[i] for i in largest]
    fig = Figure(figsize=(0.55 * len(names) + 2.5, 0.5 * len(names) + 2))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, int(count), ha="center", va="center", fontsize=7, color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="share of the true category's test papers")
    ax.set_title(f"Confusions of {model}: the {len(names)} largest test categories")
    return _save(fig, out_dir, f"confusion_matrix_{_safe_name(model)}.png")


def plot_reliability(out_dir, confidences: dict[str, tuple[np.ndarray, np.ndarray]], n_bins: int = 10) -> str | None:
    """Accuracy against confidence in equal-width bins, per model; the diagonal is perfect calibration."""
    if not confidences:
        return None
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ":", color="gray", label="calibrated")
    for name, (confidence, correct) in confidences.items():
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
        counts = np.bincount(bins, minlength=n_bins)
        filled = counts > 0
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins)[filled] / counts[filled]
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins)[filled] / counts[filled]
        ax.plot(mean_confidence, accuracy, "o-", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend()
    ax.set_title("Reliability diagram (test split)")
    return _save(fig, out_dir, "reliability.png")
