from safetensors.torch import load_file

from arxivcls.models import make_tiny_bert


def test_tiny_bert_is_the_same_model_on_every_call(tmp_path, real_papers):
    texts = (real_papers.title + " " + real_papers.summary).tolist()[:200]
    first = load_file(make_tiny_bert(tmp_path / "one", texts) / "model.safetensors")
    second = load_file(make_tiny_bert(tmp_path / "two", texts) / "model.safetensors")
    other_seed = load_file(make_tiny_bert(tmp_path / "three", texts, seed=1) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all((first[k] == second[k]).all() for k in first)
    assert any((first[k] != other_seed[k]).any() for k in first if first[k].dtype.is_floating_point)
