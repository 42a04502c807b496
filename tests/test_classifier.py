"""The Python API: `from arxivcls import Classifier` loads a saved model once and ranks papers."""
import subprocess
import sys

import numpy as np
import pytest

from arxivcls import Classifier, Prediction
from arxivcls.errors import UserError
from arxivcls.evaluate import predict_in_process


def test_classifier_ranks_papers_as_the_evaluation_s_inference_does(tiny_bert, real_papers):
    papers = real_papers.head(12)
    classifier = Classifier(tiny_bert)
    texts = [" ".join(f"{t} {a}".split()) for t, a in zip(papers.title, papers.summary)]
    probs = classifier.probabilities(papers.title.tolist(), papers.summary.tolist())
    np.testing.assert_allclose(probs, predict_in_process(str(tiny_bert), texts, max_length=512), atol=1e-6)

    ranked = classifier.predict_many(papers.title.tolist(), papers.summary.tolist(), top_k=2)
    assert len(ranked) == 12 and all(len(paper) == 2 for paper in ranked)
    assert [paper[0].category for paper in ranked] == [classifier.categories[i] for i in probs.argmax(axis=1)]
    assert all(isinstance(p, Prediction) and p.name and 0 <= p.probability <= 1 for paper in ranked for p in paper)
    assert ranked[0][0].probability >= ranked[0][1].probability
    assert classifier.predict(papers.title.iloc[0], papers.summary.iloc[0], top_k=2) == ranked[0]


def test_classifier_errors(tiny_bert, tmp_path):
    with pytest.raises(UserError, match="no such model directory"):
        Classifier(tmp_path / "missing")
    with pytest.raises(UserError, match="not a saved model directory"):
        Classifier(tmp_path)
    classifier = Classifier(tiny_bert)
    with pytest.raises(ValueError, match="2 titles but 1 abstracts"):
        classifier.probabilities(["a", "b"], ["x"])
    assert classifier.probabilities([]).shape == (0, len(classifier.categories))


def test_importing_the_package_stays_light():
    loaded = subprocess.run([sys.executable, "-c", "import sys, arxivcls; print('torch' in sys.modules, 'ray' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert loaded == ["False", "False"]
