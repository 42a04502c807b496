"""Using a saved model from Python: load it once, then classify any number of papers.

    from arxivcls import Classifier

    classifier = Classifier("models/cpu/tuned")      # a transformer, baseline or ensemble directory
    classifier.predict("Attention is all you need", "The dominant sequence transduction models ...")
    # [Prediction(category='cs.CL', probability=0.83, name='Computation and Language'), ...]
    classifier.predict_many(titles, abstracts, top_k=5)  # one list of Predictions per paper
    classifier.probabilities(titles, abstracts)          # papers x categories, columns in classifier.categories

Texts are built and truncated as in training and evaluation: `title + " " + abstract`, whitespace
collapsed, cut at the model's training max_length.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arxivcls.errors import UserError


@dataclass(frozen=True)
class Prediction:
    category: str  # arXiv code, e.g. "cs.CL"
    probability: float
    name: str  # the category's name in the arXiv taxonomy


def paper_text(title: str, abstract: str = "") -> str:
    """The model input for one paper, as arxivcls.data builds it for training."""
    return " ".join(f"{title or ''} {abstract or ''}".split())


class Classifier:
    def __init__(self, model_dir: str | Path, max_length: int | None = None):
        from arxivcls.ensemble import load_model

        if not Path(model_dir).is_dir():
            raise UserError(f"{model_dir}: no such model directory")
        self._predict_proba, id2label, _ = load_model(str(model_dir), max_length)
        self.categories = [id2label[i] for i in range(len(id2label))]

    def probabilities(self, titles: Sequence[str], abstracts: Sequence[str] | None = None) -> np.ndarray:
        abstracts = abstracts if abstracts is not None else [""] * len(titles)
        if len(abstracts) != len(titles):
            raise ValueError(f"{len(titles)} titles but {len(abstracts)} abstracts")
        if len(titles) == 0:
            return np.zeros((0, len(self.categories)), dtype=np.float32)
        return self._predict_proba([paper_text(t, a) for t, a in zip(titles, abstracts)])

    def predict_many(self, titles: Sequence[str], abstracts: Sequence[str] | None = None,
                     top_k: int = 3) -> list[list[Prediction]]:
        from arxivcls.categories import category_name
        from arxivcls.predict import top_k as rank

        ranked = rank(self.probabilities(titles, abstracts), dict(enumerate(self.categories)), top_k)
        return [[Prediction(code, prob, category_name(code)) for code, prob in paper] for paper in ranked]

    def predict(self, title: str, abstract: str = "", top_k: int = 3) -> list[Prediction]:
        return self.predict_many([title], [abstract], top_k)[0]
