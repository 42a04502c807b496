"""How sure the test-set numbers are: a seeded bootstrap over test papers, paired between models.

Every model is scored on the same resamples, so the difference between two models is measured
paper by paper (a paired bootstrap). A resample draws, within each true category, as many papers
as the category has (the test split is stratified by category, and a resample keeps every
category), and a model's macro metrics average over one label set, fixed from the whole set of
evaluated papers, in the point estimate and in every resample. A difference is called better or
worse only when its 95% interval excludes 0.
"""
import numpy as np
import pandas as pd

N_RESAMPLES = 2000
LEVEL = 0.95
LOWER_IS_BETTER = {"ece"}


def point_metrics(y_true: np.ndarray, probs: np.ndarray, top_k: int, n_bins: int = 15, hits: dict | None = None) -> dict:
    """What a bootstrap resamples per paper: the true label, the prediction, its confidence, a top-k
    hit, and any other per-paper hits (`hits`: name -> bool array, e.g. cross-list and archive)."""
    y_true = np.asarray(y_true)
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    return {"y_true": y_true, "y_pred": ranked[:, 0], "confidence": probs.max(axis=1),
            "top_k_hit": (ranked == y_true[:, None]).any(axis=1), "num_classes": probs.shape[1],
            "label_set": label_set(y_true, ranked[:, 0], probs.shape[1]), "top_k": top_k, "n_bins": n_bins,
            "hits": hits or {}}


def label_set(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The classes a macro metric averages over: every category of the evaluated papers and every one
    the model predicts for them (sklearn's default label set on the whole set), as a mask."""
    present = np.zeros(num_classes, dtype=bool)
    present[y_true] = present[y_pred] = True
    return present


def scores(paper: dict, rows: np.ndarray | None = None) -> dict[str, float]:
    """accuracy, macro and weighted F1, top-k, ECE; macro F1 over the paper's fixed `label_set` (a class
    of the set with no paper and no prediction in `rows` has F1 0, sklearn's zero_division=0)."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    y_true, y_pred, confidence = pick(paper["y_true"]), pick(paper["y_pred"]), pick(paper["confidence"])
    c, n = paper["num_classes"], len(y_true)
    correct = y_true == y_pred
    true_count, pred_count = np.bincount(y_true, minlength=c), np.bincount(y_pred, minlength=c)
    hits = np.bincount(y_true[correct], minlength=c)
    present = paper["label_set"]
    f1 = np.divide(2 * hits, true_count + pred_count, out=np.zeros(c), where=(true_count + pred_count) > 0)
    bins = np.clip(np.ceil(confidence * paper["n_bins"]).astype(int) - 1, 0, paper["n_bins"] - 1)
    gap = np.bincount(bins, weights=correct, minlength=paper["n_bins"]) - np.bincount(bins, weights=confidence, minlength=paper["n_bins"])
    return {"accuracy": correct.mean(), "macro_f1": f1[present].mean(), "weighted_f1": (f1 * true_count).sum() / n,
            f"top{paper['top_k']}_accuracy": pick(paper["top_k_hit"]).mean(), "ece": np.abs(gap).sum() / n,
            **{f"{name}_accuracy": pick(hit).mean() for name, hit in paper.get("hits", {}).items()}}


def stratified_resamples(strata: np.ndarray, n_resamples: int, seed: int):
    """Row indices of `n_resamples` bootstrap resamples, one at a time: each stratum (true category)
    contributes as many rows as it has, drawn with replacement from its own rows."""
    order = np.argsort(strata, kind="stable")
    counts = np.bincount(strata)
    first = (np.cumsum(counts) - counts)[strata[order]]  # per sorted row: where its stratum starts
    size = counts[strata[order]]
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield order[first + (rng.random(len(order)) * size).astype(np.int64)]


def bootstrap(papers: dict[str, dict], n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, pd.DataFrame]:
    """model -> (n_resamples x metric) scores; every model on the same resampled papers, stratified by
    the true category. Resamples are drawn one at a time: memory grows with the papers, not
    resamples x papers (2,000 x 216k row indices would be 3.5 GB)."""
    y_true = next(iter(papers.values()))["y_true"]
    if any(not np.array_equal(paper["y_true"], y_true) for paper in papers.values()):
        raise ValueError("a paired bootstrap needs every model scored on the same papers")
    resampled = {name: [] for name in papers}
    for rows in stratified_resamples(y_true, n_resamples, seed):
        for name, paper in papers.items():
            resampled[name].append(scores(paper, rows))
    return {name: pd.DataFrame(table) for name, table in resampled.items()}


def intervals(samples: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """model x {metric}_low / {metric}_high: the percentile interval of each metric."""
    tail = (1 - LEVEL) / 2 * 100
    table = {}
    for name, frame in samples.items():
        low, high = np.percentile(frame.to_numpy(), [tail, 100 - tail], axis=0)
        table[name] = {**{f"{m}_low": v for m, v in zip(frame.columns, low)},
                       **{f"{m}_high": v for m, v in zip(frame.columns, high)}}
    return pd.DataFrame(table).T


def verdict(low: float, high: float, metric: str) -> str:
    """'better' / 'worse' for the first model of a pair, or no significant difference."""
    if low <= 0 <= high:
        return "no significant difference"
    first_higher = low > 0
    return "better" if first_higher != (metric in LOWER_IS_BETTER) else "worse"


def paired_differences(samples: dict[str, pd.DataFrame], points: dict[str, dict], pairs: list[tuple[str, str]],
                       metrics: list[str]) -> pd.DataFrame:
    """One row per (model, reference, metric): the difference model - reference, its interval, the verdict."""
    tail = (1 - LEVEL) / 2 * 100
    rows = []
    for model, reference in pairs:
        for metric in metrics:
            resampled = samples[model][metric] - samples[reference][metric]
            low, high = np.percentile(resampled, [tail, 100 - tail])
            rows.append({"model": model, "reference": reference, "metric": metric,
                         "difference": points[model][metric] - points[reference][metric],
                         "low": low, "high": high, "verdict": verdict(low, high, metric)})
    return pd.DataFrame(rows)
