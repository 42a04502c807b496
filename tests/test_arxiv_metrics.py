"""Accuracy that knows arXiv: cross-lists, archives, aliases and legacy codes."""
import numpy as np

from arxivcls.categories import archive, canonical
from arxivcls.metrics import arxiv_hits
from arxivcls.stats import point_metrics, scores

PAPERS = [  # primary, listed categories, prediction, (exact, cross-list, archive)
    ("cs.LG", "cs.LG stat.ML", "stat.ML", (False, True, False)),  # a secondary category: cross-list only
    ("cs.LG", "cs.LG", "cs.CV", (False, False, True)),  # same archive, not listed
    ("cs.LG", "cs.LG cs.AI", "cs.LG", (True, True, True)),
    ("math-ph", "math-ph", "math.MP", (False, True, True)),  # math.MP is an alias of math-ph
    ("math.AP", "math.AP", "math-ph", (False, False, False)),  # math-ph is a physics archive
    ("cmp-lg", "cmp-lg", "cs.CL", (False, True, True)),  # legacy archive, now cs.CL
    ("alg-geom", "alg-geom", "math.DG", (False, False, True)),  # legacy alg-geom is math.AG: archive math
    ("astro-ph.GA", "astro-ph.GA astro-ph.CO", "astro-ph.CO", (False, True, True)),
]


def test_exact_crosslist_and_archive_accuracy_on_hand_made_papers():
    primary, listed, predicted, expected = zip(*PAPERS)
    hits = arxiv_hits(list(predicted), list(primary), list(listed))
    exact = np.array([p == t for p, t in zip(predicted, primary)])
    np.testing.assert_array_equal(exact, [e[0] for e in expected])
    np.testing.assert_array_equal(hits["crosslist"], [e[1] for e in expected])
    np.testing.assert_array_equal(hits["archive"], [e[2] for e in expected])


def test_the_accuracies_enter_the_bootstrap_scores():
    names = sorted({code for paper in PAPERS for code in (paper[0], paper[2])})
    primary, listed, predicted, _ = zip(*PAPERS)
    y_true = np.array([names.index(p) for p in primary])
    probs = np.full((len(PAPERS), len(names)), 0.01)
    probs[np.arange(len(PAPERS)), [names.index(p) for p in predicted]] = 0.9
    got = scores(point_metrics(y_true, probs, 3, hits=arxiv_hits(list(predicted), list(primary), list(listed))))
    assert got["accuracy"] == 1 / 8 and got["crosslist_accuracy"] == 5 / 8 and got["archive_accuracy"] == 6 / 8


def test_taxonomy_rules():
    assert archive("cs.LG") == "cs" and archive("astro-ph.GA") == "astro-ph" and archive("quant-ph") == "quant-ph"
    assert canonical("math.MP") == "math-ph" and canonical("stat.TH") == "math.ST" and canonical("funct-an") == "math.FA"
    assert archive("math.MP") == archive("math-ph") == "math-ph" and archive("chao-dyn") == "nlin"
