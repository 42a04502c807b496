"""Models served as pickled pytorch_model.bin (SciBERT on the hub): loaded through the restricted
unpickler, converted to safetensors once in arxivcls's cache; a pickle with a code payload is refused."""
import json
import os
from pathlib import Path

import pytest
import torch

from arxivcls.cli import main
from arxivcls.models import PICKLED_WEIGHTS, load_classifier, load_tokenizer, resolve_model, save_pickled_like_the_hub


@pytest.fixture
def model_cache(tmp_path, monkeypatch):
    cache = tmp_path / "converted"
    monkeypatch.setenv("ARXIVCLS_MODEL_CACHE", str(cache))
    return cache


def hub_style_copy(tiny_bert: Path, directory: Path, legacy_names: bool = False) -> Path:
    """The tiny model as the hub serves SciBERT: config.json, vocab.txt, pytorch_model.bin."""
    model = load_classifier(str(tiny_bert))
    vocab = sorted(load_tokenizer(str(tiny_bert)).get_vocab().items(), key=lambda item: item[1])
    save_pickled_like_the_hub(model, directory, [token for token, _ in vocab])
    if legacy_names:  # 2019-era BERT checkpoints name LayerNorm parameters gamma/beta
        state = torch.load(directory / PICKLED_WEIGHTS, weights_only=True)
        renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                   for k, v in state.items()}
        torch.save(renamed, directory / PICKLED_WEIGHTS)
    return directory


def test_pickled_model_is_converted_once_and_loads_the_same_weights(tiny_bert, tmp_path, model_cache):
    source = hub_style_copy(tiny_bert, tmp_path / "hub", legacy_names=True)
    files_before = sorted(p.name for p in source.iterdir())
    assert files_before == ["config.json", PICKLED_WEIGHTS, "vocab.txt"]

    converted = Path(resolve_model(str(source)))
    assert converted.parent == model_cache and (converted / "model.safetensors").is_file()
    assert {"config.json", "vocab.txt"} <= {p.name for p in converted.iterdir()}
    assert not (converted / PICKLED_WEIGHTS).exists()
    assert sorted(p.name for p in source.iterdir()) == files_before  # the user's directory is never written
    written = (converted / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(str(source)) == str(converted)  # once: the next load reads the converted copy
    assert (converted / "model.safetensors").stat().st_mtime_ns == written

    original, loaded = load_classifier(str(tiny_bert)).state_dict(), load_classifier(str(source)).state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)  # gamma/beta renamed by transformers

    texts = ["Graph neural networks for protein folding", "A note on the heat equation in Sobolev spaces"]
    fast, from_vocab = load_tokenizer(str(tiny_bert)), load_tokenizer(str(converted))
    assert fast(texts)["input_ids"] == from_vocab(texts)["input_ids"]


def test_predict_on_a_pickled_model_matches_its_safetensors_original(tiny_bert, tmp_path, model_cache, capsys):
    source = hub_style_copy(tiny_bert, tmp_path / "hub")
    outputs = []
    for model in (tiny_bert, source):
        assert main(["predict", "--model", str(model), "--title", "Deep learning for galaxy images", "--top-k", "2"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].strip()


class Payload:
    """Unpickling this calls os.system: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_carries_code_is_refused_and_never_runs(tiny_bert, tmp_path, model_cache, capsys):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((tiny_bert / "config.json").read_text())
    torch.save({"bert.embeddings.word_embeddings.weight": torch.zeros(2, 2), "extra": Payload(marker)},
               evil / PICKLED_WEIGHTS)

    torch.load(evil / PICKLED_WEIGHTS, weights_only=False)  # the payload is real: a plain unpickler runs it
    assert marker.exists()
    marker.unlink()

    for argv in (["predict", "--model", str(evil), "--title", "x"],
                 ["plan", "tune/cpu.yaml", "--set", f"model.name={evil}"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: refused to load") and "evil" in err[0], err
        assert not marker.exists()
    assert not model_cache.exists() or not any(model_cache.iterdir())  # nothing half-converted
    assert json.loads((evil / "config.json").read_text())  # the directory is left as it was
