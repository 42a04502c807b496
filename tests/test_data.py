import json

import pandas as pd
import pytest

from arxivcls.config import DataConfig
from arxivcls.data import detect_schema, normalize, prepare, read_table, stratified_sample, stratified_split
from arxivcls.errors import UserError


def kaggle_frame(real_papers):
    return real_papers.drop(columns=["source"]).assign(published_date="2025-01-01")


def oai_frame(real_papers):
    return pd.DataFrame({"id": real_papers.id + "v2", "title": real_papers.title, "abstract": real_papers.summary,
                         "categories": real_papers.categories, "authors": "A. Author"})


def test_schema_detection_all_three(real_papers, tmp_path):
    assert detect_schema(real_papers.columns) == "arxiv-digest"
    assert detect_schema(kaggle_frame(real_papers).columns) == "kaggle"
    assert detect_schema(oai_frame(real_papers).columns) == "arxiv-oai"
    # each schema read back from its usual file format
    kaggle_frame(real_papers).to_csv(tmp_path / "k.csv", index=False)
    oai_frame(real_papers).to_json(tmp_path / "o.jsonl", orient="records", lines=True)
    papers_k, schema_k, _ = normalize(read_table(str(tmp_path / "k.csv")))
    papers_o, schema_o, _ = normalize(read_table(str(tmp_path / "o.jsonl")))
    assert (schema_k, schema_o) == ("kaggle", "arxiv-oai")
    # OAI: primary = first of `categories`, version suffix dropped from ids; same papers either way
    assert papers_o.category.tolist() == papers_k.category.tolist() == real_papers.category_code.tolist()
    assert papers_o.id.tolist() == real_papers.id.tolist()


def test_unknown_schema_names_missing_columns():
    with pytest.raises(UserError, match=r"kaggle needs \['category_code', 'summary'\]"):
        detect_schema(["id", "title", "text", "label"])


def test_text_is_title_plus_abstract_normalised():
    raw = pd.DataFrame({"id": ["1", "2", "3"], "title": ["  A\n title ", "B", None],
                        "summary": ["An   abstract.", None, None], "category_code": ["cs.LG", "cs.CV", "cs.CV"]})
    papers, _, dropped = normalize(raw)
    assert papers.text.tolist() == ["A title An abstract.", "B"]  # missing abstract -> title only
    assert dropped["no_text"] == 1


def test_duplicates_and_conflicting_labels():
    raw = pd.DataFrame({"id": ["1", "1", "2", "2", "3"], "title": ["a", "a", "b", "b", "c"], "summary": ["x"] * 5,
                        "category_code": ["cs.LG", "cs.LG", "cs.LG", "cs.CV", "cs.CV"]})
    papers, _, dropped = normalize(raw)
    assert papers.id.tolist() == ["1", "3"]
    assert dropped["duplicate_ids"] == 1 and dropped["conflicting_duplicate_ids"] == 1


def test_rare_classes_dropped_and_reported(real_papers, tmp_path):
    rare = pd.DataFrame({"id": ["r1", "r2", "r3"], "title": ["t"] * 3, "summary": ["s"] * 3,
                         "category_code": ["q-bio.SC", "q-bio.SC", "cs.GL"], "categories": "x", "source": "y"})
    path = tmp_path / "p.parquet"
    pd.concat([real_papers, rare]).to_parquet(path)
    prepared = prepare(DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"), min_per_class=5), log=lambda *_: None)
    assert prepared.meta["dropped_categories"] == {"q-bio.SC": 2, "cs.GL": 1}
    assert set(prepared.id2label.values()) == set(real_papers.category_code)


def test_split_is_disjoint_stratified_and_keeps_every_class_in_train(real_papers):
    papers, _, _ = normalize(real_papers)
    tiny = pd.DataFrame({"id": ["t1", "t2", "t3", "s1"], "text": ["x"] * 4, "category": ["tiny", "tiny", "tiny", "single"]})
    papers = pd.concat([papers, tiny], ignore_index=True)
    splits = stratified_split(papers, 0.1, 0.1, seed=1)
    ids = [set(df.id) for df in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == len(papers)
    assert set(splits["train"].category) == set(papers.category)  # a one-paper class lands in train
    for name in ("val", "test"):  # 200 per class -> 20 per class in val and test
        assert splits[name].category.value_counts().drop(["tiny"]).eq(20).all()
        assert (splits[name].category == "tiny").sum() == 1
    again = stratified_split(papers, 0.1, 0.1, seed=1)
    assert again["test"].id.tolist() == splits["test"].id.tolist()  # seeded


def test_stratified_sample_keeps_imbalance():
    papers = pd.DataFrame({"id": [str(i) for i in range(1110)], "text": "x",
                           "category": ["big"] * 1000 + ["mid"] * 100 + ["small"] * 10})
    sample = stratified_sample(papers, 222, seed=0)
    counts = sample.category.value_counts()
    assert counts.to_dict() == {"big": 200, "mid": 20, "small": 2}  # every class at the rate 222/1110
    assert sample.id.is_unique and set(sample.id) <= set(papers.id)


def test_prepare_drops_classes_left_rare_by_the_sample(tmp_path):
    papers = pd.DataFrame({"id": [str(i) for i in range(1110)], "title": "t", "summary": [f"paper {i}" for i in range(1110)],
                           "category_code": ["cs.LG"] * 1000 + ["cs.CV"] * 100 + ["stat.ML"] * 10})
    path = tmp_path / "papers.csv"
    papers.to_csv(path, index=False)
    prepared = prepare(DataConfig(path=str(path), cache_dir=str(tmp_path / "cache"), max_papers=222, min_per_class=5),
                       log=lambda *a: None)
    assert prepared.meta["dropped_categories"] == {"stat.ML": 2}  # 2 papers in the sample < min_per_class
    assert sum(prepared.meta["split_sizes"].values()) == 220


def test_prepare_caches_and_label_map_round_trips(papers_file, tmp_path):
    cfg = DataConfig(path=str(papers_file), cache_dir=str(tmp_path / "cache"))
    logs = []
    first = prepare(cfg, log=logs.append)
    second = prepare(cfg, log=logs.append)
    assert first.dir == second.dir and "cache hit" in logs[-1]
    assert all(first.label2id[first.id2label[i]] == i for i in range(first.num_labels))
    meta = json.loads((tmp_path / "cache" / "prepared" / first.key / "meta.json").read_text())
    assert {int(k): v for k, v in meta["id2label"].items()} == first.id2label
    train = first.load_split("train")
    assert (train.label.map(first.id2label) == train.category).all()
    assert sum(first.train_counts.values()) == len(train)
    other = prepare(DataConfig(path=str(papers_file), cache_dir=str(tmp_path / "cache"), seed=7), log=logs.append)
    assert other.key != first.key  # options are part of the cache key


@pytest.mark.parametrize("content, suffix, message", [
    (b"", ".csv", "empty"),
    (b"PAR1 this is not parquet", ".parquet", "cannot read"),
    (b"id;title;summary;category_code\n1;a;b;cs.LG\n", ".csv", "no known schema"),
    (b"1,a title,an abstract,cs.LG\n2,b,c,cs.CV\n", ".csv", "no known schema"),
    (b"id,title,summary,category_code\n1,caf\xe9,b,cs.LG\n", ".csv", "not valid UTF-8"),
    (b"{\"id\": 1, \"title\": \n", ".jsonl", "cannot read"),
    (b"id,title\n", ".txt", "unsupported data format"),
])
def test_bad_files_give_clear_errors(tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        normalize(read_table(str(path)))


def test_every_class_below_minimum(tmp_path):
    path = tmp_path / "few.csv"
    pd.DataFrame({"id": ["1", "2"], "title": ["a", "b"], "summary": ["c", "d"], "category_code": ["cs.LG", "cs.CV"]}).to_csv(path, index=False)
    with pytest.raises(UserError, match="every category has fewer than min_per_class=5"):
        prepare(DataConfig(path=str(path), cache_dir=str(tmp_path / "cache")), log=lambda *_: None)
    assert not (tmp_path / "cache" / "prepared").exists() or not any((tmp_path / "cache" / "prepared").iterdir())


def test_huge_abstract_is_clipped(tmp_path):
    raw = pd.DataFrame({"id": ["1"], "title": ["t"], "summary": ["word " * 200_000], "category_code": ["cs.LG"]})
    papers, _, _ = normalize(raw)
    assert len(papers.text[0]) <= 50_002
