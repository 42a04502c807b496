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


def test_tiny_bert_vocabulary_is_the_same_in_every_process(tmp_path, papers_file):
    """tokenizers' WordPieceTrainer broke ties in hash-map order: a new vocabulary per process."""
    import subprocess
    import sys

    script = ("import sys, pandas as pd; from arxivcls.models import make_tiny_bert; df = pd.read_parquet(sys.argv[1]); "
              "make_tiny_bert(sys.argv[2], (df.title + ' ' + df.summary).tolist())")
    for name in ("first", "second"):
        subprocess.run([sys.executable, "-c", script, str(papers_file), str(tmp_path / name)], check=True, capture_output=True)
    first, second = ((tmp_path / name / "tokenizer.json").read_text() for name in ("first", "second"))
    assert first == second and '"##e"' in first
