"""Classification metrics and the tables that compare models on the test split.

Label ids are integers 0..C-1; `label_names[i]` is the category code of id i.
`predictions` maps a model name to its predicted label ids, aligned with `y_true`.
"""
import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

# Categories are binned by how many training papers they have; the last bin is open-ended.
SIZE_BINS = [(1, 10), (11, 100), (101, 1000), (1001, 10000), (10001, None)]
SIZE_BIN_LABELS = ["1-10", "11-100", "101-1000", "1001-10000", "10000+"]
UNSEEN_BIN = "0"  # categories with no training papers at all (only possible on odd splits)


def size_bin_label(train_count: int) -> str:
    for (low, high), label in zip(SIZE_BINS, SIZE_BIN_LABELS):
        if train_count >= low and (high is None or train_count <= high):
            return label
    return UNSEEN_BIN


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Sum over equal-width confidence bins (lo, hi] of |accuracy - mean confidence| * share of papers."""
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        in_bin = bins == b
        ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int) -> float:
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def classification_metrics(y_true, proba, top_k: int = 3, n_bins: int = 15) -> dict[str, float]:
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=float)
    if len(y_true) == 0 or proba.shape != (len(y_true), proba.shape[-1]):
        raise ValueError(f"need one probability row per label, got {proba.shape} for {len(y_true)} labels")
    y_pred = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    correct = y_pred == y_true
    # sklearn's default label set: every class seen in y_true or y_pred
    macro = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {
        "accuracy": float(correct.mean()),
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "weighted_precision": float(weighted[0]),
        "weighted_recall": float(weighted[1]),
        "weighted_f1": float(weighted[2]),
        "mean_confidence": float(confidence.mean()),
        f"top{top_k}_accuracy": top_k_accuracy(y_true, proba, top_k),
        "ece": expected_calibration_error(confidence, correct, n_bins),
    }


def per_category_table(y_true, predictions: dict, label_names: list[str], train_counts: dict[str, int]) -> pd.DataFrame:
    """One row per category with test support or training papers.

    `<model>_accuracy` is recall on the category (NaN without test papers). `<model>_f1` is NaN
    when the category is neither in the test split nor ever predicted, the same categories that
    sklearn's default label set leaves out of macro F1.
    """
    y_true = np.asarray(y_true)
    num_classes = len(label_names)
    labels = np.arange(num_classes)
    support = np.bincount(y_true, minlength=num_classes)
    table = pd.DataFrame({
        "category": label_names,
        "train_count": [int(train_counts.get(name, 0)) for name in label_names],
        "support": support,
    })
    table["size_bin"] = [size_bin_label(c) for c in table.train_count]
    for model, y_pred in predictions.items():
        y_pred = np.asarray(y_pred)
        _, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
        predicted = np.bincount(y_pred, minlength=num_classes)
        table[f"{model}_accuracy"] = np.where(support > 0, recall, np.nan)
        table[f"{model}_f1"] = np.where((support > 0) | (predicted > 0), f1, np.nan)
    keep = (table.support > 0) | (table.train_count > 0)
    return table[keep].sort_values(["train_count", "category"], ascending=[False, True]).reset_index(drop=True)


def size_bin_table(y_true, predictions: dict, label_names: list[str], train_counts: dict[str, int]) -> pd.DataFrame:
    """One row per training-count bin (all five, plus UNSEEN_BIN when such categories exist)."""
    y_true = np.asarray(y_true)
    per_category = per_category_table(y_true, predictions, label_names, train_counts)
    category_bin = np.array([size_bin_label(int(train_counts.get(name, 0))) for name in label_names])
    paper_bin = category_bin[y_true]
    bins = SIZE_BIN_LABELS + ([UNSEEN_BIN] if (per_category.size_bin == UNSEEN_BIN).any() else [])
    rows = []
    for label in bins:
        in_bin = per_category[per_category.size_bin == label]
        papers = paper_bin == label
        row = {"size_bin": label, "categories": len(in_bin), "test_papers": int(papers.sum())}
        for model, y_pred in predictions.items():
            hits = np.asarray(y_pred)[papers] == y_true[papers]
            row[f"{model}_accuracy"] = float(hits.mean()) if papers.any() else np.nan
            f1 = in_bin[f"{model}_f1"].dropna()
            row[f"{model}_macro_f1"] = float(f1.mean()) if len(f1) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def confusion_pairs(y_true, y_pred, label_names: list[str], top: int = 15) -> pd.DataFrame:
    """The most frequent mistakes: (true, predicted) pairs off the diagonal."""
    pairs = pd.DataFrame({"true": np.asarray(y_true), "predicted": np.asarray(y_pred)})
    support = pairs.true.value_counts()
    wrong = pairs[pairs.true != pairs.predicted]
    counts = wrong.groupby(["true", "predicted"]).size().rename("count").reset_index()
    counts["share_of_true"] = counts["count"] / counts.true.map(support)
    names = np.asarray(label_names)
    counts["true"] = names[counts.true.to_numpy()]
    counts["predicted"] = names[counts.predicted.to_numpy()]
    counts = counts.sort_values(["count", "true", "predicted"], ascending=[False, True, True])
    return counts.head(top).reset_index(drop=True)


def largest_differences(per_category: pd.DataFrame, model_a: str, model_b: str, top: int = 10) -> pd.DataFrame:
    """Test categories where F1 of model_a and model_b differ most; f1_difference = a - b."""
    a, b = f"{model_a}_f1", f"{model_b}_f1"
    columns = [c for c in ("category", "train_count", "support", a, b) if c in per_category]
    table = per_category.loc[per_category.support > 0, columns].dropna()
    table["f1_difference"] = table[a] - table[b]
    order = table.f1_difference.abs().sort_values(ascending=False, kind="stable").index
    return table.loc[order].head(top).reset_index(drop=True)


def arxiv_hits(predicted: list[str], primary: list[str], categories: list[str]) -> dict[str, np.ndarray]:
    """Per paper: is the prediction one of the paper's listed categories (cross-list), and is it in
    the primary category's archive (aliases and legacy codes mapped by the arXiv taxonomy)?"""
    from arxivcls.categories import archive, canonical, listed

    return {"crosslist": np.array([canonical(p) in listed(c, t) for p, t, c in zip(predicted, primary, categories)]),
            "archive": np.array([archive(p) == archive(t) for p, t in zip(predicted, primary)])}


def coverage_tables(primary, model_labels: dict[str, list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per model, the papers whose primary category is one of its labels (the only ones it can get
    exactly right), and every category it never saw with its number of papers."""
    support = pd.Series(np.asarray(primary)).value_counts()
    rows, unseen = [], []
    for model, labels in model_labels.items():
        missing = support[~support.index.isin(list(labels))].sort_index().sort_values(ascending=False, kind="stable")
        covered = int(support.sum() - missing.sum())
        rows.append({"model": model, "labels": len(labels), "papers": int(support.sum()), "covered_papers": covered,
                     "coverage": covered / support.sum(), "unseen_categories": len(missing), "unseen_papers": int(missing.sum())})
        unseen += [{"model": model, "category": category, "papers": int(n)} for category, n in missing.items()]
    return pd.DataFrame(rows).set_index("model"), pd.DataFrame(unseen, columns=["model", "category", "papers"])
