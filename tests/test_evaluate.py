import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from arxivcls.evaluate import choose_tau, logit_adjust, predict_in_process, predict_with_ray_data
from arxivcls.metrics import classification_metrics


def test_logit_adjustment_tau_zero_is_the_model_and_tau_shifts_to_rare_classes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50).astype(np.float32)
    prior = np.array([0.7, 0.2, 0.09, 0.01])
    np.testing.assert_array_equal(logit_adjust(probs, prior, 0.0), probs)
    adjusted = logit_adjust(probs, prior, 1.0)
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0, rtol=1e-6)
    assert (adjusted.argmax(1) == 3).sum() > (probs.argmax(1) == 3).sum()
    assert adjusted[:, 0].mean() < probs[:, 0].mean()


def test_choose_tau_helps_a_model_biased_to_the_head_class():
    labels = np.array([0] * 60 + [1] * 40)
    probs = np.where(labels[:, None] == 1, [0.55, 0.45], [0.8, 0.2])  # class 1 never predicted
    prior = np.array([0.9, 0.1])
    tau = choose_tau(probs, labels, prior)
    assert tau > 0
    assert classification_metrics(labels, logit_adjust(probs, prior, tau))["macro_f1"] > classification_metrics(labels, probs)["macro_f1"]


@pytest.mark.slow
def test_ray_data_path_equals_in_process_loop(ray_local, tiny_bert, real_papers):
    texts = (real_papers.title + " " + real_papers.summary).tolist()[:150]
    # fp32: bf16 rounding would depend on each path's thread count; this compares batching and order
    plain = predict_in_process(str(tiny_bert), texts, max_length=128, batch_size=16, precision="fp32")
    distributed = predict_with_ray_data(str(tiny_bert), texts, max_length=128, batch_size=16, num_actors=2, precision="fp32")
    assert plain.shape == distributed.shape == (150, 2)
    np.testing.assert_allclose(distributed, plain, atol=1e-5)
    assert (distributed.argmax(1) == plain.argmax(1)).all()


def test_predict_cli_single_paper_and_file(tiny_bert, tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "arxivcls.cli", "predict", "--model", str(tiny_bert), *args],
                                       capture_output=True, text=True, timeout=300)
    single = run("--title", "Quantum error correction", "--abstract", "We study surface codes.", "--top-k", "2")
    assert single.returncode == 0, single.stderr
    assert len([line for line in single.stdout.splitlines() if line.strip()]) == 2
    papers = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a", "../../escape"], "title": ["t1", "t2"], "abstract": ["x", "y"]}).to_csv(papers, index=False)
    out = tmp_path / "out" / "pred.jsonl"
    many = run("--input", str(papers), "--output", str(out))
    assert many.returncode == 0, many.stderr
    frame = pd.read_json(out, lines=True)
    assert frame.id.tolist() == ["a", "../../escape"] and {"top1", "top1_prob", "top2"} <= set(frame.columns)  # k capped at the 2 labels
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["in.csv", "pred.jsonl"]  # nothing else written


def test_the_readme_pipeline_recipe_ranks_like_predict(tiny_bert, real_papers):
    from transformers import pipeline

    texts = (real_papers.title + " " + real_papers.summary).tolist()[:12]
    classify = pipeline("text-classification", model=str(tiny_bert))
    ranked = classify(texts, truncation=True, max_length=128, top_k=2)
    probs = predict_in_process(str(tiny_bert), texts, max_length=128, precision="fp32")
    labels = classify.model.config.id2label
    assert [r[0]["label"] for r in ranked] == [labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([r[0]["score"] for r in ranked], probs.max(1), atol=1e-5)
