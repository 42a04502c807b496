"""TF-IDF + linear classifier: what a user would try before fine-tuning a transformer.

Features: word 1-2 grams, sublinear tf, min_df=2 once the corpus is big enough for that to
prune typos rather than real vocabulary.

Classifier: SGDClassifier(loss="log_loss", alpha=5e-6), one-vs-rest, at most 15 epochs with
the default tolerance to stop once the loss stops improving. Measured on real papers from
arxiv_papers.parquet (title + abstract, a random sample, 88-112 of the 155 classes present,
2,000 other papers held out; 2 CPU cores shared with other jobs, so times vary by ~1.5x).
Fit times are the classifier alone; TF-IDF adds ~1.2 s at 3k papers and ~3.7 s at 10k.

    train papers  classifier                        fit     accuracy  macro F1  top-3   ECE
    3,000         SGD log_loss (this one)          1-3 s    0.657     0.115     0.834   0.070
    10,000        SGD log_loss (this one)          6.8 s    0.697     0.162     0.885   0.029
    10,000        SGD log_loss, 15 full epochs    14 s      0.699     0.165     0.886   0.029
    10,000        LinearSVC + softmax(margins)     8.5 s    0.705     0.169     0.894   0.671
    10,000        LogisticRegression(saga)        27 s      0.692     0.151     0.875   0.037
    3,000         LogisticRegression(lbfgs)       63 s      0.644     0.090     0.806   -

LinearSVC is a hair more accurate but has no probabilities: a softmax of its margins puts
~0.03 on the top class (ECE 0.67), and calibrating it needs cross-validation folds that the
rarest classes cannot fill. SGD with log loss gives usable probabilities (ECE ~0.03) for
top-3 accuracy and confidence at a similar fit time, and is the fastest probabilistic option.
Its cost grows with papers x classes x epochs (~0.7-1.3 ms per paper here, rising with the
class count), which extrapolates to minutes, not hours, for ~200k papers and 150 classes.
"""
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

MIN_DOCS_FOR_MIN_DF = 1000  # below this, a word seen once is still worth keeping


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
