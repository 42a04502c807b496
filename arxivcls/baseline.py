"""TF-IDF + linear classifier: what a user would try before fine-tuning a transformer.

`BaselineParams` are its settings: word n-grams, min_df, sublinear tf, and a linear classifier,
either logistic regression (SGDClassifier(loss="log_loss"), one-vs-rest) or a linear SVM
(LinearSVC, its margins turned into probabilities by one temperature fitted on validation papers).
The study tunes them (arxivcls.baseline_search; docs/design.md compares the alternatives). A
fitted baseline is saved as plain JSON and arrays (no pickle) and loads without running any code.
"""
import dataclasses
import json
import time
import warnings

from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer

MIN_DOCS_FOR_MIN_DF = 1000  # below this, a word seen once is still worth keeping
SAVED_PARAMS = ("ngram_range", "sublinear_tf", "min_df", "lowercase", "token_pattern", "norm", "use_idf", "smooth_idf")
CLASSIFIERS = ("logistic", "svm")
CLASS_WEIGHTS = ("none", "balanced")


@dataclasses.dataclass(frozen=True)
class BaselineParams:
    classifier: str = "logistic"  # logistic | svm
    alpha: float = 5e-6  # L2 penalty per paper: SGDClassifier's alpha; LinearSVC's C = 1 / (alpha * papers)
    ngram_max: int = 2  # word 1..ngram_max grams
    min_df: int = 0  # papers a term needs; 0: 2 from MIN_DOCS_FOR_MIN_DF training papers on, else 1
    sublinear_tf: bool = True
    class_weight: str = "none"  # none | balanced

    def __post_init__(self):
        if self.classifier not in CLASSIFIERS or self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS} and class_weight one of {CLASS_WEIGHTS}")


class SavedLinear:
    """A fitted linear classifier as arrays: probabilities from its scores X @ coef.T + intercept.

    link "ovr": one-vs-rest sigmoids, normalised (as SGDClassifier(log_loss).predict_proba computes
    them); link "softmax": softmax(scale * scores) (a LinearSVC's margins, temperature-scaled)."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, link: str = "ovr", scale: float = 1.0):
        self.coef, self.intercept, self.link, self.scale = coef, intercept, link, float(scale)

    def scores(self, features) -> np.ndarray:
        """(n, classes) scores; two classes have one score, for the second class."""
        return np.asarray(features @ self.coef.T) + self.intercept

    def predict_proba(self, features) -> np.ndarray:
        return probabilities(self.scores(features), self.link, self.scale)


def probabilities(scores: np.ndarray, link: str, scale: float = 1.0) -> np.ndarray:
    if scores.shape[1] == 1:  # two classes: one score, for the second class
        second = 1 / (1 + np.exp(-scale * scores[:, 0]))
        return np.column_stack([1 - second, second])
    if link == "softmax":
        logits = scale * scores
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)
    sigmoids = 1 / (1 + np.exp(-scores))
    return sigmoids / sigmoids.sum(axis=1, keepdims=True)


class Baseline:
    def __init__(self, vectorizer, classifier, classes: np.ndarray, num_classes: int, fit_seconds: float,
                 params: BaselineParams = BaselineParams()):
        self.vectorizer = vectorizer
        self.classifier = classifier  # a SavedLinear; None when training saw a single class
        self.classes = classes  # label ids seen in training = the classifier's probability columns
        self.num_classes = num_classes
        self.fit_seconds = fit_seconds  # vectorizer + classifier (+ temperature)
        self.params = params

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
        """vectorizer.json (settings, vocabulary, labels, link) + weights.npz (idf, coefficients, classes)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = {k: v for k, v in self.vectorizer.get_params().items() if k in SAVED_PARAMS}
        vocabulary = {term: int(i) for term, i in self.vectorizer.vocabulary_.items()}
        linear = self.classifier
        (directory / "vectorizer.json").write_text(json.dumps(
            {"kind": "tfidf-linear", "params": params, "vocabulary": vocabulary, "labels": list(label_names),
             "link": linear.link if linear else "ovr", "scale": linear.scale if linear else 1.0,
             "baseline_params": dataclasses.asdict(self.params)}))
        coef = linear.coef if linear is not None else np.zeros((0, len(vocabulary)))
        intercept = linear.intercept if linear is not None else np.zeros(0)
        np.savez(directory / "weights.npz", idf=self.vectorizer.idf_, coef=coef, intercept=intercept, classes=self.classes)


def load_baseline(directory) -> tuple[Baseline, list[str]]:
    """A saved baseline and its label names; arrays load with allow_pickle=False."""
    directory = Path(directory)
    saved = json.loads((directory / "vectorizer.json").read_text())
    params = {**saved["params"], "ngram_range": tuple(saved["params"]["ngram_range"])}
    vectorizer = TfidfVectorizer(**params, vocabulary=saved["vocabulary"])
    with np.load(directory / "weights.npz", allow_pickle=False) as arrays:
        vectorizer.idf_ = arrays["idf"]
        classifier = (SavedLinear(arrays["coef"], arrays["intercept"], saved.get("link", "ovr"), saved.get("scale", 1.0))
                      if len(arrays["coef"]) else None)
        classes = arrays["classes"]
    baseline_params = BaselineParams(**saved["baseline_params"]) if "baseline_params" in saved else BaselineParams()
    return Baseline(vectorizer, classifier, classes, len(saved["labels"]), 0.0, baseline_params), saved["labels"]


def fit_baseline(texts: list[str], labels: np.ndarray, num_classes: int, seed: int = 0,
                 params: BaselineParams = BaselineParams(), calibration: tuple[list[str], np.ndarray] | None = None) -> Baseline:
    """Fit on (texts, labels). A linear SVM needs `calibration` papers (texts, labels; the validation
    split): its temperature is the one that minimises their log-loss."""
    labels = np.asarray(labels)
    if len(texts) != len(labels) or len(texts) == 0:
        raise ValueError(f"need one label per text, got {len(texts)} texts and {len(labels)} labels")
    if params.classifier == "svm" and calibration is None:
        raise ValueError("a linear SVM baseline needs calibration papers for its temperature")
    started = time.perf_counter()
    min_df = params.min_df or (2 if len(texts) >= MIN_DOCS_FOR_MIN_DF else 1)
    vectorizer = TfidfVectorizer(ngram_range=(1, params.ngram_max), sublinear_tf=params.sublinear_tf, min_df=min_df)
    features = vectorizer.fit_transform(texts)
    classes = np.unique(labels)
    if len(classes) == 1:  # a linear classifier refuses a single class; the answer is that class
        return Baseline(vectorizer, None, classes, num_classes, time.perf_counter() - started, params)
    linear = fit_linear(features, labels, params, seed)
    if params.classifier == "svm":
        calibration_texts, calibration_labels = calibration
        linear.scale = fit_scale(linear.scores(vectorizer.transform(calibration_texts)), classes, np.asarray(calibration_labels))
    return Baseline(vectorizer, linear, classes, num_classes, time.perf_counter() - started, params)


def fit_linear(features, labels: np.ndarray, params: BaselineParams, seed: int) -> SavedLinear:
    from sklearn.linear_model import SGDClassifier
    from sklearn.svm import LinearSVC

    class_weight = None if params.class_weight == "none" else params.class_weight
    if params.classifier == "logistic":
        model = SGDClassifier(loss="log_loss", alpha=params.alpha, max_iter=15, tol=1e-3, class_weight=class_weight,
                              random_state=seed)
    else:
        model = LinearSVC(C=1 / (params.alpha * len(labels)), class_weight=class_weight, random_state=seed)
    with warnings.catch_warnings():
        # SGD's 15-epoch cap is a choice, not a failure; LinearSVC at a large C may stop short the same way
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return SavedLinear(model.coef_, model.intercept_, "ovr" if params.classifier == "logistic" else "softmax")


def fit_scale(scores: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> float:
    """1 / temperature: the factor on the margins that minimises the log-loss of `labels` (papers of
    classes the classifier never saw are left out)."""
    from scipy.optimize import minimize_scalar

    column = {c: i for i, c in enumerate(classes)}
    known = np.array([label in column for label in labels])
    if not known.any():
        return 1.0
    rows, columns = np.flatnonzero(known), np.array([column[label] for label in labels[known]])

    def log_loss(log_scale: float) -> float:
        return -np.log(np.clip(probabilities(scores[rows], "softmax", np.exp(log_scale))[np.arange(len(rows)), columns],
                               1e-12, None)).mean()
    return float(np.exp(minimize_scalar(log_loss, bounds=(np.log(1e-2), np.log(1e3)), method="bounded").x))
