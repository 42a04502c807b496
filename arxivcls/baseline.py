"""TF-IDF + linear classifier: what a user would try before fine-tuning a transformer.

Word 1-2 grams with sublinear tf, and SGDClassifier(loss="log_loss") one-vs-rest for usable
probabilities at a fit time of seconds (docs/design.md compares the alternatives). A fitted
baseline is saved as plain JSON and arrays (no pickle) and loads without running any code.
"""
import json
import time
import warnings

from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

MIN_DOCS_FOR_MIN_DF = 1000  # below this, a word seen once is still worth keeping
SAVED_PARAMS = ("ngram_range", "sublinear_tf", "min_df", "lowercase", "token_pattern", "norm", "use_idf", "smooth_idf")


class Baseline:
    def __init__(self, vectorizer, classifier, classes: np.ndarray, num_classes: int, fit_seconds: float):
        self.vectorizer = vectorizer
        self.classifier = classifier  # None when training saw a single class
        self.classes = classes  # label ids seen in training = the classifier's probability columns
        self.num_classes = num_classes
        self.fit_seconds = fit_seconds  # vectorizer + classifier

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(n, num_classes) probabilities; classes never seen in training get 0."""
        proba = np.zeros((len(texts), self.num_classes))
        if len(texts) == 0:
            return proba
        if self.classifier is None:
            proba[:, self.classes] = 1.0
        else:
            proba[:, self.classes] = self.classifier.predict_proba(self.vectorizer.transform(texts))
        return proba

    def save(self, directory, label_names: list[str]) -> None:
        """vectorizer.json (settings, vocabulary, labels) + weights.npz (idf, coefficients, classes)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = {k: v for k, v in self.vectorizer.get_params().items() if k in SAVED_PARAMS}
        vocabulary = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
        (directory / "vectorizer.json").write_text(json.dumps(
            {"kind": "tfidf-linear", "params": params, "vocabulary": vocabulary, "labels": list(label_names)}))
        coef = self.classifier.coef_ if self.classifier is not None else np.zeros((0, len(vocabulary)))
        intercept = self.classifier.intercept_ if self.classifier is not None else np.zeros(0)
        np.savez(directory / "weights.npz", idf=self.vectorizer.idf_, coef=coef, intercept=intercept, classes=self.classes)


class SavedLinear:
    """The fitted one-vs-rest log-loss classifier, as SGDClassifier.predict_proba computes it."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray):
        self.coef, self.intercept = coef, intercept

    def predict_proba(self, features) -> np.ndarray:
        scores = 1 / (1 + np.exp(-(features @ self.coef.T + self.intercept)))
        if scores.shape[1] == 1:  # two classes: one score, for the second class
            return np.hstack([1 - scores, scores])
        return scores / scores.sum(axis=1, keepdims=True)


def load_baseline(directory) -> tuple[Baseline, list[str]]:
    """A saved baseline and its label names; arrays load with allow_pickle=False."""
    directory = Path(directory)
    saved = json.loads((directory / "vectorizer.json").read_text())
    params = {**saved["params"], "ngram_range": tuple(saved["params"]["ngram_range"])}
    vectorizer = TfidfVectorizer(**params, vocabulary=saved["vocabulary"])
    with np.load(directory / "weights.npz", allow_pickle=False) as arrays:
        vectorizer.idf_ = arrays["idf"]
        classifier = SavedLinear(arrays["coef"], arrays["intercept"]) if len(arrays["coef"]) else None
        classes = arrays["classes"]
    return Baseline(vectorizer, classifier, classes, len(saved["labels"]), 0.0), saved["labels"]


def fit_baseline(texts: list[str], labels: np.ndarray, num_classes: int, seed: int = 0) -> Baseline:
    labels = np.asarray(labels)
    if len(texts) != len(labels) or len(texts) == 0:
        raise ValueError(f"need one label per text, got {len(texts)} texts and {len(labels)} labels")
    started = time.perf_counter()
    min_df = 2 if len(texts) >= MIN_DOCS_FOR_MIN_DF else 1
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df)
    features = vectorizer.fit_transform(texts)
    classes = np.unique(labels)
    if len(classes) == 1:  # SGDClassifier refuses a single class; the answer is that class
        return Baseline(vectorizer, None, classes, num_classes, time.perf_counter() - started)
    classifier = SGDClassifier(loss="log_loss", alpha=5e-6, max_iter=15, tol=1e-3, random_state=seed)
    with warnings.catch_warnings():
        # hitting the 15-epoch cap is a choice, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features, labels)
    return Baseline(vectorizer, classifier, classifier.classes_, num_classes, time.perf_counter() - started)
