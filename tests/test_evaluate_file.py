"""`arxivcls evaluate --data FILE --model NAME=DIR`: saved models with different label sets (and a
TF-IDF baseline) on any labelled file, streamed through Ray Data. Fast tests check the pieces and
every refused input; the slow ones run the command on real papers with tiny random classifiers."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from arxivcls.cli import main
from arxivcls.errors import UserError
from arxivcls.evaluate_file import parse_models, usable_papers
from arxivcls.data import normalize_rows
from arxivcls import file_scoring
from arxivcls.file_scoring import Scored, collect, open_papers_file, read_chunks

LABELS_A = ["cs.CV", "cs.CL", "math.AP", "quant-ph"]  # cs.RO and cs.LG of the papers: never seen
LABELS_B = ["cs.CV", "cs.RO", "hep-th"]  # another label set; hep-th is in no paper


def classifier(tiny_bert: Path, directory: Path, labels: list[str], seed: int, max_length: int | None = None) -> Path:
    """The tiny BERT with a random head over `labels`, saved as a study exports a model."""
    import torch

    from arxivcls.models import load_classifier, load_tokenizer

    torch.manual_seed(seed)
    load_classifier(str(tiny_bert), dict(enumerate(labels))).save_pretrained(directory)
    tokenizer = load_tokenizer(str(tiny_bert))
    if max_length:
        tokenizer.model_max_length = max_length  # as training saves it
    tokenizer.save_pretrained(directory)
    return directory


def run(argv, capsys) -> tuple[int, list[str]]:
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


# ---------------------------------------------------------------- pieces, without Ray

def test_model_names_are_checked():
    assert parse_models(["a=x", "b+c=y/z=w"], with_baseline=False) == {"a": "x", "b+c": "y/z=w"}
    for items, message in ((["a"], "NAME=DIR"), (["=x"], "NAME=DIR"), (["a="], "NAME=DIR"), (["a b=x"], "NAME=DIR"),
                           (["a=x", "a=y"], "given twice"), ([], "give the models")):
        with pytest.raises(UserError, match=message):
            parse_models(items, with_baseline=False)
    with pytest.raises(UserError, match="given by --baseline"):
        parse_models(["baseline=x"], with_baseline=True)


def test_rows_without_text_or_label_and_duplicate_ids_are_counted_as_prepare_counts_them():
    from arxivcls.data import normalize

    raw = pd.DataFrame({"id": ["1", "2", "3", "4", "4", "5", "5", "6"],
                        "title": ["t", "", "t", "t", "t", "t", "t", "t"], "summary": ["a", " ", "a", "a", "a", "a", "b", "a"],
                        "category_code": ["cs.CV", "cs.CV", "", "cs.CV", "cs.CL", "cs.CV", "cs.CV", "cs.CL"], "source": "x"})
    rows = normalize_rows(raw, "arxiv-digest").assign(row=range(len(raw)))
    scored = Scored(rows.assign(has_text=rows.text != "").drop(columns="text"), {"m": np.eye(8, 2, dtype=np.float32)}, {}, 1.0, 1)
    papers, probs, dropped, read = usable_papers(scored, "file")
    expected, _, expected_dropped = normalize(raw)
    assert dropped == expected_dropped == {"no_text": 1, "no_category": 1, "conflicting_duplicate_ids": 1, "duplicate_ids": 1}
    assert papers.id.tolist() == expected.id.tolist() == ["1", "5", "6"]
    assert papers.row.tolist() == [0, 5, 7] and probs["m"].shape == (3, 2) and read == {}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_files_are_read_in_chunks_as_prepare_reads_them(suffix, tmp_path):
    from arxivcls.data import read_table

    frame = pd.DataFrame({"id": ["0704.0001", "0704.0010", "3"], "title": ["A", "B", "C"], "abstract": ["x", "y", None],
                          "categories": ["hep-th math.MP", "cs.CL", "cs.CV"]})
    path = tmp_path / f"papers{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    papers = open_papers_file(str(path))
    assert papers.schema == "arxiv-oai" and papers.columns == ("id", "title", "abstract", "categories")
    chunks = list(read_chunks(str(path), papers.format, list(papers.columns), rows=2))
    assert [len(c) for c in chunks] == [2, 1]
    rows = normalize_rows(pd.concat(chunks, ignore_index=True), papers.schema)
    whole = read_table(str(path))
    assert rows.id.tolist() == whole.id.astype(str).tolist() == ["0704.0001", "0704.0010", "3"]  # ids stay text
    assert rows.category.tolist() == ["hep-th", "cs.CL", "cs.CV"] and rows.text.tolist() == ["A x", "B y", "C"]


def test_progress_rate_counts_from_the_first_scored_window(monkeypatch):
    """Start-up takes 100 s, then a window of 50 rows every 10 s: 5 papers/s, not 250 rows / 140 s."""
    arrivals = iter([100.0, 110.0, 120.0, 130.0, 140.0])
    monkeypatch.setattr(file_scoring.time, "perf_counter", lambda: next(arrivals))

    class Windows:
        def iter_batches(self, **_):
            return iter([{"row": np.arange(50)}] * 5)

    lines = []
    parts = collect(Windows(), started=0.0, total_rows=1250, log=lines.append, every_s=25)
    assert len(parts) == 5
    assert lines == ["scored 100 of 1250 rows in 110 s (5.0 papers/s; about 4 min to go)",
                     "scored 250 of 1250 rows in 140 s (5.0 papers/s; about 3 min to go)"]


def test_bootstrap_draws_one_resample_at_a_time_the_same_seeded_rows():
    from arxivcls import stats

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=120)
    papers = {m: stats.point_metrics(labels, rng.dirichlet(np.ones(4), size=120), 3) for m in ("a", "b")}
    rows = list(stats.stratified_resamples(labels, 50, seed=7))  # drawn again, all at once: the same rows
    assert all(np.array_equal(np.bincount(labels[r], minlength=4), np.bincount(labels, minlength=4)) for r in rows)
    for name, frame in stats.bootstrap(papers, n_resamples=50, seed=7).items():
        pd.testing.assert_frame_equal(frame, pd.DataFrame([stats.scores(papers[name], r) for r in rows]))


def test_coverage_counts_every_unseen_category():
    from arxivcls.metrics import coverage_tables

    coverage, unseen = coverage_tables(["a", "a", "b", "c", "c", "c"], {"m": ["a", "b", "x"], "n": ["c"]})
    assert coverage.loc["m", ["covered_papers", "unseen_papers", "unseen_categories"]].tolist() == [3, 3, 1]
    assert coverage.loc["n", "coverage"] == pytest.approx(0.5)
    assert unseen.values.tolist() == [["m", "c", 3], ["n", "a", 2], ["n", "b", 1]]


def test_an_ensemble_and_its_transformer_share_one_forward_pass_and_predict_as_predict(tiny_bert, real_papers, tmp_path):
    from arxivcls.baseline import fit_baseline
    from arxivcls.ensemble import load_model, save_ensemble
    from arxivcls.file_scoring import FileScorer, model_spec

    texts = (real_papers.title + " " + real_papers.summary).tolist()
    labels = ["cs.CL", "cs.CV"]
    fit_baseline(texts, (real_papers.category_code == "cs.CV").to_numpy().astype(int), 2).save(tmp_path / "baseline", labels)
    model = classifier(tiny_bert, tmp_path / "model", labels, seed=3, max_length=64)
    save_ensemble(tmp_path / "ensemble", model, tmp_path / "baseline", 0.4, 64, "auto")
    specs = [model_spec(name, str(tmp_path / name)) for name in ("model", "ensemble", "baseline")]
    scorer = FileScorer(specs, batch_size=8, num_threads=1)
    assert len(scorer.transformers) == 1
    window = {"row": np.arange(20), "id": np.arange(20).astype(str), "text": np.array(texts[:20], dtype=object),
              "category": np.array(["cs.CL"] * 19 + [""], dtype=object), "categories": np.array(["cs.CL"] * 20, dtype=object)}
    scored = scorer(window)
    for i, spec in enumerate(specs):
        expected = load_model(spec.path)[0](texts[:19])
        np.testing.assert_allclose(scored[f"probs_{i}"][:19], expected, atol=1e-6)
        assert not scored[f"probs_{i}"][19].any()  # no category: not scored
    from arxivcls.reading import WORD  # what each model read: tokens up to its max_length, or every word

    assert scored["read_tokens_0"][:19].max() == 64 and scored["read_cut_0"][:19].any() and scored["read_tokens_0"][19] == 0
    assert scored["read_tokens_2"][:19].tolist() == [len(WORD.findall(t)) for t in texts[:19]]
    assert "read_tokens_1" not in scored  # an ensemble reads through its two models


# ---------------------------------------------------------------- refused inputs: one line, exit 2, nothing written

def _bad_cases(d: Path, model: Path, good: Path) -> dict:
    other = d / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    (d / "empty.csv").write_text("")
    (d / "corrupt.parquet").write_bytes(b"PAR1 garbage" * 10)
    pd.DataFrame({"doi": [1], "text": ["a"]}).to_csv(d / "unknown.csv", index=False)
    pd.DataFrame({"id": ["1"], "title": ["t"], "summary": ["a"], "category_code": [""]}).to_csv(d / "unlabelled.csv", index=False)
    (d / "file.txt").write_text("x")
    m = ["--model", f"a={model}"]
    return {
        "missing file": (["--data", str(d / "nope.parquet"), *m], "data file not found"),
        "empty file": (["--data", str(d / "empty.csv"), *m], "data file is empty"),
        "corrupt parquet": (["--data", str(d / "corrupt.parquet"), *m], "cannot read"),
        "unknown schema": (["--data", str(d / "unknown.csv"), *m], "no known schema"),
        "no labelled papers": (["--data", str(d / "unlabelled.csv"), *m], "no labelled papers"),
        "unsupported format": (["--data", str(d / "file.txt"), *m], "unsupported data format"),
        "a model dir without a model": (["--data", str(good), "--model", f"a={other}"], "not a saved model directory"),
        "a model path that does not exist": (["--data", str(good), "--model", f"a={d / 'none'}"], "no such directory"),
        "NAME=PATH malformed": (["--data", str(good), "--model", str(model)], "expects NAME=DIR"),
        "duplicate names": (["--data", str(good), *m, *m], "given twice"),
        "no model": (["--data", str(good)], "give the models"),
        "--out a non-empty other directory": (["--data", str(good), *m, "--out", str(other)], "holds other files"),
        "--out a file": (["--data", str(good), *m, "--out", str(d / "file.txt")], "a file, not a directory"),
        "--out not writable": (["--data", str(good), *m, "--out", "/proc/arxivcls-eval/out"], "cannot write"),
        "--baseline file missing": (["--data", str(good), *m, "--baseline", str(d / "none.csv")], "--baseline"),
        "--baseline without labels": (["--data", str(good), *m, "--baseline", str(d / "unlabelled.csv")], "--baseline"),
        "--limit 0": (["--data", str(good), *m, "--limit", "0"], "--limit must be >= 1"),
        "--data and RESULTS_DIR": ([str(d), "--data", str(good), *m], "either RESULTS_DIR"),
        "neither": ([*m], "either RESULTS_DIR"),
        "--data without --out": (["--data", str(good), *m, "--out", ""], "needs --out"),
        "--out with RESULTS_DIR": ([str(d), "--out", str(d / "o")], "only with --data"),
    }


def test_bad_inputs_get_one_error_line_and_leave_nothing(tiny_bert, papers_file, tmp_path, capsys):
    model = classifier(tiny_bert, tmp_path / "model", LABELS_A, seed=0)
    capsys.readouterr()  # the model's own save messages
    for case, (argv, message) in _bad_cases(tmp_path, model, papers_file).items():
        out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
        code, err = run(["evaluate", *argv, *out], capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], (case, err)
    assert not (tmp_path / "out").exists() and not Path("/proc/arxivcls-eval").exists()
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging directory left


# ---------------------------------------------------------------- the command, with Ray

def _evaluation_file(real_papers: pd.DataFrame, path: Path) -> pd.DataFrame:
    """300 real papers plus one row without text, one without a category, and a repeated id."""
    papers = real_papers.groupby("category_code").head(50).reset_index(drop=True)
    odd = pd.DataFrame([{**papers.iloc[0].to_dict(), "id": "no-text", "title": None, "summary": " "},
                        {**papers.iloc[1].to_dict(), "id": "no-label", "category_code": None},
                        papers.iloc[2].to_dict()])
    frame = pd.concat([papers, odd], ignore_index=True)
    frame.to_parquet(path, index=False)
    return papers


@pytest.fixture(scope="module")
def evaluated(ray_local, tiny_bert, real_papers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate_file")
    papers = _evaluation_file(real_papers, tmp / "papers.parquet")
    train = real_papers.groupby("category_code").tail(40)  # the baseline's training file: 240 other papers
    train.to_csv(tmp / "train.csv", index=False)
    models = {"a": classifier(tiny_bert, tmp / "a", LABELS_A, seed=1, max_length=64),
              "b": classifier(tiny_bert, tmp / "b", LABELS_B, seed=2)}
    code = main(["evaluate", "--data", str(tmp / "papers.parquet"), "--model", f"a={models['a']}", "--model", f"b={models['b']}",
                 "--baseline", str(tmp / "train.csv"), "--out", str(tmp / "out"), "--batch-size", "16"])
    assert code == 0
    return {"tmp": tmp, "out": tmp / "out", "papers": papers, "train": train, "models": models}


@pytest.mark.slow
def test_outputs_and_paper_counts(evaluated):
    out, papers = evaluated["out"], evaluated["papers"]
    assert {"report.md", "comparison.csv", "coverage.csv", "unseen_categories.csv", "categories.csv", "covered_comparison.csv",
            "predictions.parquet", "evaluation.json", "reliability.png"} <= {p.name for p in out.iterdir()}
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["rows_read"] == len(papers) + 3 and evaluation["papers"] == len(papers) == 300
    assert evaluation["dropped"] == {"no_text": 1, "no_category": 1, "conflicting_duplicate_ids": 0, "duplicate_ids": 1}
    assert evaluation["models"]["a"]["max_length"] == 64 and evaluation["models"]["b"]["max_length"] == 512
    comparison = pd.read_csv(out / "comparison.csv", index_col="model")
    assert comparison.at["a", "read_tokens"] <= 64 < comparison.at["b", "read_tokens"] and comparison.at["a", "read_truncated"] > 0
    assert comparison.at["baseline", "read_unit"] == "words" and comparison.at["baseline", "read_truncated"] == 0
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert predictions.id.tolist() == papers.id.tolist()  # every paper once, in file order
    report = (out / "report.md").read_text()
    assert "no_text=1, no_category=1" in report and "## Coverage" in report and "300 evaluated papers" in report


@pytest.mark.slow
def test_unseen_categories_are_counted_kept_and_wrong(evaluated):
    out, papers = evaluated["out"], evaluated["papers"]
    coverage = pd.read_csv(out / "coverage.csv", index_col="model")
    counts = papers.category_code.value_counts()
    assert coverage.loc["a", "covered_papers"] == counts[LABELS_A].sum() == 200
    assert coverage.loc["b", "covered_papers"] == counts[["cs.CV", "cs.RO"]].sum() == 100
    assert coverage.loc["baseline", "covered_papers"] == 300 and coverage.loc["a", "papers"] == 300
    unseen = pd.read_csv(out / "unseen_categories.csv")
    assert unseen[unseen.model == "a"].set_index("category").papers.to_dict() == {"cs.RO": 50, "cs.LG": 50}
    assert set(unseen[unseen.model == "b"].category) == {"cs.CL", "math.AP", "quant-ph", "cs.LG"}
    predictions = pd.read_parquet(out / "predictions.parquet")
    unseen_a = ~predictions.true.isin(LABELS_A)
    assert unseen_a.sum() == 100 and (predictions.a_pred[unseen_a] != predictions.true[unseen_a]).all()
    comparison = pd.read_csv(out / "comparison.csv", index_col="model")
    for model in ("a", "b", "baseline"):
        assert comparison.loc[model, "accuracy"] == pytest.approx((predictions[f"{model}_pred"] == predictions.true).mean(), abs=1e-4)
    covered = pd.read_csv(out / "covered_comparison.csv", index_col="model")
    both = predictions.true == "cs.CV"  # the only category that a, b and the baseline all know
    assert covered.loc["a", "accuracy"] == pytest.approx((predictions.a_pred[both] == predictions.true[both]).mean(), abs=1e-4)


@pytest.mark.slow
def test_top1_equals_predict(evaluated, capsys):
    tmp = evaluated["tmp"]
    for model in ("a", "b"):
        assert main(["predict", "--model", str(evaluated["models"][model]), "--input", str(tmp / "papers.parquet"),
                     "--output", str(tmp / f"predict_{model}.csv"), "--top-k", "1"]) == 0
        predicted = pd.read_csv(tmp / f"predict_{model}.csv", dtype=str).drop_duplicates("id").set_index("id").top1
        evaluated_top1 = pd.read_parquet(evaluated["out"] / "predictions.parquet").set_index("id")[f"{model}_pred"]
        assert (predicted.loc[evaluated_top1.index] == evaluated_top1).all()


@pytest.mark.slow
def test_baseline_fitted_on_the_training_file(evaluated):
    out, train = evaluated["out"], evaluated["train"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["models"]["baseline"] == {"kind": "baseline", "path": str(evaluated["tmp"] / "train.csv"), "labels": 6,
                                                "max_length": None, "precision": None}
    assert evaluation["baseline_training_overlap"] == evaluated["papers"].id.isin(train.id).sum()
    differences = pd.read_csv(out / "differences.csv")
    assert {tuple(p) for p in differences[["model", "reference"]].values} == {("b", "a"), ("baseline", "a")}


@pytest.mark.slow
def test_other_schema_with_a_limit_replaces_the_earlier_output(evaluated, real_papers):
    tmp = evaluated["tmp"]
    oai = real_papers.rename(columns={"summary": "abstract"})[["id", "title", "abstract", "categories"]]
    oai.to_json(tmp / "papers.jsonl", orient="records", lines=True)
    assert main(["evaluate", "--data", str(tmp / "papers.jsonl"), "--model", f"a={evaluated['models']['a']}",
                 "--limit", "40", "--out", str(evaluated["out"])]) == 0
    evaluation = json.loads((evaluated["out"] / "evaluation.json").read_text())
    assert evaluation["schema"] == "arxiv-oai" and evaluation["rows_read"] == evaluation["papers"] == 40
    assert not (evaluated["out"] / "covered_differences.csv").read_text().strip()  # one model: nothing to pair


@pytest.mark.slow
def test_a_file_whose_papers_all_lack_text_is_refused(evaluated, capsys):
    tmp = evaluated["tmp"]
    pd.DataFrame({"id": ["1", "2"], "title": ["", None], "summary": [" ", None], "category_code": ["cs.CV", "cs.CL"],
                  "source": "x"}).to_csv(tmp / "textless.csv", index=False)
    code, err = run(["evaluate", "--data", str(tmp / "textless.csv"), "--model", f"a={evaluated['models']['a']}",
                     "--out", str(tmp / "textless")], capsys)
    assert code == 2 and err[-1].startswith("error: ") and "no labelled papers" in err[-1]
    assert not (tmp / "textless").exists()
