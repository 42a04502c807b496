"""ensemble.load_model: the one loader behind predict, serve, Classifier and evaluate --data.
A transformer infers as the evaluation does, at the length it was trained at; an ensemble mixes
its transformer and baseline with its weight."""
import json
import shutil
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from arxivcls.classifier import paper_text
from arxivcls.ensemble import load_model, mix, save_ensemble
from arxivcls.evaluate import predict_in_process


def texts_of(papers, n):
    return [paper_text(t, a) for t, a in zip(papers.title[:n], papers.summary[:n])]


def test_a_transformer_infers_as_the_evaluation_alone_or_in_a_batch(tiny_bert, real_papers):
    texts = texts_of(real_papers, 12)
    predict, labels, settings = load_model(str(tiny_bert), num_threads=1)
    reference = predict_in_process(str(tiny_bert), texts, max_length=512)
    assert labels == AutoConfig.from_pretrained(tiny_bert).id2label
    assert settings["kind"] == "transformer" and settings["max_length"] == 512
    np.testing.assert_allclose(predict(texts), reference, atol=1e-6)
    np.testing.assert_allclose(predict(texts[:1]), reference[:1], atol=1e-6)


def test_a_transformer_truncates_where_it_was_trained(tiny_bert, real_papers, tmp_path):
    model = Path(shutil.copytree(tiny_bert, tmp_path / "trained_at_64"))
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    texts = texts_of(real_papers, 6)
    predict, _, settings = load_model(str(model))
    assert settings["max_length"] == 64
    np.testing.assert_allclose(predict(texts), predict_in_process(str(model), texts, max_length=64), atol=1e-6)
    assert not np.allclose(predict(texts), predict_in_process(str(model), texts, max_length=512), atol=1e-6)
    assert load_model(str(model), max_length=128)[2]["max_length"] == 128  # an explicit length wins


def test_an_ensemble_mixes_its_transformer_and_baseline(tiny_bert, real_papers, tmp_path):
    from arxivcls.baseline import fit_baseline, load_baseline

    texts = [paper_text(t, a) for t, a in zip(real_papers.title, real_papers.summary)]
    id2label = AutoConfig.from_pretrained(tiny_bert).id2label
    names = [id2label[i] for i in range(len(id2label))]
    fit_baseline(texts, np.arange(len(texts)) % len(names), len(names)).save(tmp_path / "baseline", names)
    save_ensemble(tmp_path / "ensemble", tiny_bert, tmp_path / "baseline", 0.3, 64, "fp32")

    predict, labels, settings = load_model(str(tmp_path / "ensemble"))
    baseline = load_baseline(tmp_path / "baseline")[0].predict_proba
    expected = mix(predict_in_process(str(tiny_bert), texts[:8], max_length=64), baseline(texts[:8]), 0.3)
    assert settings == {"kind": "ensemble", "weight": 0.3, "max_length": 64, "precision": "fp32"}
    assert labels == dict(enumerate(names))
    np.testing.assert_allclose(predict(texts[:8]), expected, atol=1e-6)

    predict, labels, settings = load_model(str(tmp_path / "baseline"))
    assert settings == {"kind": "baseline"} and labels == dict(enumerate(names))
    np.testing.assert_allclose(predict(texts[:8]), baseline(texts[:8]), atol=1e-12)
