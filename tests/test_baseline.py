import numpy as np
import pytest

from arxivcls.baseline import fit_baseline

# labels 0, 2 and 3 have their own vocabularies; 1 and 4 never occur in training
VOCAB = {
    0: "galaxy redshift stellar cosmic halo quasar luminosity telescope".split(),
    2: "theorem lemma manifold operator hilbert sobolev compact proof".split(),
    3: "neural network transformer gradient dataset benchmark training loss".split(),
}
SHARED = "we study the a of and results new method show".split()
NUM_CLASSES = 5


def synthetic(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(VOCAB), size=n)
    texts = [" ".join(rng.choice(VOCAB[y], 4).tolist() + rng.choice(SHARED, 8).tolist()) for y in labels]
    return texts, labels


def test_baseline_learns_and_aligns_probability_columns():
    train_texts, train_labels = synthetic(240, seed=0)
    test_texts, test_labels = synthetic(60, seed=1)

    model = fit_baseline(train_texts, train_labels, NUM_CLASSES, seed=0)
    proba = model.predict_proba(test_texts)

    assert proba.shape == (60, NUM_CLASSES)
    assert np.all(proba[:, [1, 4]] == 0)
    assert proba.sum(axis=1) == pytest.approx(np.ones(60))
    assert (proba.argmax(axis=1) == test_labels).mean() >= 0.95
    assert model.fit_seconds > 0
    np.testing.assert_array_equal(proba, fit_baseline(train_texts, train_labels, NUM_CLASSES, seed=0).predict_proba(test_texts))


def test_baseline_with_one_training_class_predicts_it():
    model = fit_baseline(["stellar halo", "galaxy quasar"], np.array([2, 2]), 3)
    np.testing.assert_array_equal(model.predict_proba(["anything at all"]), [[0.0, 0.0, 1.0]])
    assert model.predict_proba([]).shape == (0, 3)
