"""A fair comparison: the baseline is tuned on validation like the transformer, the truncated-text
control reads only what the transformer reads, and every reported estimate lies inside its own
interval, also on a file with many rare and unseen categories. Fast tests run the pieces in
process; the slow ones run the search as Ray tasks and `evaluate --data` / evaluate_study."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from arxivcls.baseline import BaselineParams, fit_baseline, load_baseline
from arxivcls.baseline_search import SearchData, run_trial, search_baseline
from arxivcls.categories import CATEGORY_NAMES

CODES = sorted(c for c in CATEGORY_NAMES if "." in c)
METRICS = ["accuracy", "macro_f1", "weighted_f1", "crosslist_accuracy", "archive_accuracy", "top3_accuracy", "ece"]
SAMPLE = "data/arxiv_sample.parquet"


def words_of(category: str) -> list[str]:
    return [f"{category.replace('.', '').replace('-', '').lower()}w{i}" for i in range(6)]


def made_up_texts(categories, rng, shared: int = 10, own: int = 3) -> list[str]:
    """Each paper: `own` words of its category's vocabulary among `shared` common words, shuffled."""
    common = [f"common{i}" for i in range(40)]
    return [" ".join(rng.permutation(rng.choice(words_of(c), own).tolist() + rng.choice(common, shared).tolist()))
            for c in categories]


def in_process(data):
    return lambda points, metric: [run_trial(data, point, metric) for point in points]


# ---------------------------------------------------------------- the baseline's own search

def search_data(seed=0) -> SearchData:
    rng = np.random.default_rng(seed)
    categories = CODES[:6]
    train, val = rng.choice(6, 180), rng.choice(6, 90)
    return SearchData(made_up_texts([categories[i] for i in train], rng), train,
                      made_up_texts([categories[i] for i in val], rng), val, 6, seed)


SEARCH = {"num_trials": 6, "trials_per_batch": 2,
          "search_space": {"alpha": {"type": "choice", "values": [1e-4, 30.0]}}}  # 30: coefficients near 0


def test_the_search_picks_the_clearly_better_of_two_settings():
    data = search_data()
    search = search_baseline(data, SEARCH, "val_macro_f1", "max", seed=0, log=lambda *_: None, run_batch=in_process(data))
    trials = search.trials
    assert len(trials) == 6 and set(trials.p_alpha) == {1e-4, 30.0} and (trials.status == "completed").all()
    by_alpha = trials.groupby("p_alpha").val_macro_f1.max()
    assert by_alpha[1e-4] > by_alpha[30.0] + 0.1
    assert search.best == BaselineParams(alpha=1e-4)
    assert trials.trial.tolist() == list(range(6)) and trials.default.tolist() == [True] + [False] * 5


def test_the_search_minimises_a_loss_and_starts_from_the_default_settings():
    data = search_data(1)
    config = {"num_trials": 3, "trials_per_batch": 3, "search_space": {
        "classifier": {"type": "choice", "values": ["logistic", "svm"]}, "ngram_max": {"type": "int", "low": 1, "high": 2},
        "min_df": {"type": "int", "low": 1, "high": 2}}}
    search = search_baseline(data, config, "val_loss", "min", seed=0, log=lambda *_: None, run_batch=in_process(data))
    first = search.trials.iloc[0]
    assert (first.p_classifier, first.p_ngram_max, first.p_min_df) == ("logistic", 2, 1)  # BaselineParams' defaults
    best = dataclasses.asdict(search.best)
    assert search.trials.val_loss.min() == pytest.approx(run_trial(data, {k: best[k] for k in config["search_space"]},
                                                                   "val_loss")["value"])


def test_a_linear_svm_baseline_is_calibrated_on_validation_and_saved_as_it_predicts(tmp_path):
    data = search_data(2)
    params = BaselineParams(classifier="svm", alpha=1e-3, ngram_max=1, class_weight="balanced")
    with pytest.raises(ValueError, match="calibration"):
        fit_baseline(data.train_texts, data.train_labels, 6, params=params)
    model = fit_baseline(data.train_texts, data.train_labels, 6, params=params, calibration=(data.val_texts, data.val_labels))
    proba = model.predict_proba(data.val_texts)
    assert proba.sum(axis=1) == pytest.approx(np.ones(len(proba)))
    assert model.classifier.scale > 1  # a LinearSVC's margins are near +-1: softmax(margins) alone would be near uniform
    assert proba.max(axis=1).mean() > 0.5 and (proba.argmax(1) == data.val_labels).mean() > 0.9
    model.save(tmp_path / "svm", CODES[:6])
    loaded, labels = load_baseline(tmp_path / "svm")
    assert labels == CODES[:6] and loaded.params == params
    np.testing.assert_allclose(loaded.predict_proba(data.val_texts), proba, atol=1e-12)
    assert "pickle" not in (tmp_path / "svm" / "vectorizer.json").read_text()


def test_the_baseline_config_section_is_checked():
    from arxivcls.config import load_config
    from arxivcls.errors import UserError

    config = load_config(None, ["baseline.search_space.alpha={type: loguniform, low: 1.0e-5, high: 1.0e-3}"])
    assert config.baseline.search_space["alpha"] == {"type": "loguniform", "low": 1e-5, "high": 1e-3}
    assert set(config.baseline.search_space) > {"alpha", "classifier"}  # --set changes one setting's range
    for bad, message in (("baseline.search_space.kernel={type: choice, values: [rbf]}", "not a baseline setting"),
                         ("baseline.search_space.classifier={type: choice, values: [forest]}", "a choice among"),
                         ("baseline.search_space.ngram_max={type: uniform, low: 1, high: 3}", "type int or choice"),
                         ("baseline.search_space.ngram_max={type: int, low: 1, high: 9}", "between 1 and 3"),
                         ("baseline.num_trials=0", ">= 1")):
        with pytest.raises(UserError, match=message):
            load_config(None, [bad])


# ---------------------------------------------------------------- the truncated-text control

@pytest.fixture(scope="module")
def tokenizer_dir():
    from arxivcls.models import minilm_path

    return minilm_path()  # the quick start's tokenizer, installed with the package


def test_the_control_reads_only_the_transformers_tokens(tokenizer_dir):
    """A word past max_length cannot change the control's prediction; it can change the full-text baseline's."""
    from arxivcls.evaluate import truncated_control
    from arxivcls.models import load_tokenizer
    from arxivcls.reading import transformer_reading

    rng = np.random.default_rng(0)
    categories = ["cs.CV", "math.AP", "quant-ph"]
    frame = lambda n: pd.DataFrame({"label": (labels := rng.choice(3, n)),
                                    "text": made_up_texts([categories[i] for i in labels], rng, shared=3, own=3)})
    train, val = frame(150), frame(60)
    heads = made_up_texts([categories[0]] * 40, rng, shared=2, own=2)  # short openings, all of cs.CV's words
    tail = " ".join(words_of(categories[1]) * 20)  # many math.AP words, all past the limit
    params = BaselineParams(ngram_max=1)
    probs, facts = truncated_control(params, str(tokenizer_dir), 16, train, val, heads, 3, seed=0)
    with_tail, _ = truncated_control(params, str(tokenizer_dir), 16, train, val, [f"{h} {tail}" for h in heads], 3, seed=0)
    np.testing.assert_array_equal(with_tail, probs)
    assert facts["max_length"] == 16
    full = fit_baseline(train.text.tolist(), train.label.to_numpy(), 3, params=params)
    assert (full.predict_proba([f"{h} {tail}" for h in heads]).argmax(1) != full.predict_proba(heads).argmax(1)).any()
    read, reading = transformer_reading(load_tokenizer(str(tokenizer_dir)), [f"{h} {tail}" for h in heads], 16)
    assert reading["read_truncated"] == 1.0 and reading["read_tokens"] == 16
    assert reading["read_chars"] < np.mean([len(h) for h in heads]) + 10 and not any(tail.split()[0] in r for r in read)


# ---------------------------------------------------------------- every estimate inside its interval

def made_up_file(seed=0):
    """8 large categories the model knows, 12 rare ones it knows and 70 rare ones it never saw
    (1-2 papers each), as a study's test split or a labelled file; probabilities over the 20 known."""
    rng = np.random.default_rng(seed)
    known, unseen = CODES[:20], CODES[20:90]
    sizes = {**{c: 100 for c in known[:8]}, **{c: int(rng.integers(1, 3)) for c in known[8:] + unseen}}
    primary = np.repeat(list(sizes), list(sizes.values()))
    right = (rng.random(len(primary)) < 0.75) & np.isin(primary, known)
    predicted = np.where(right, primary, rng.choice(known, len(primary)))
    categories = [f"{p} {o}" if rng.random() < 0.3 else p for p, o in zip(primary, rng.choice(CODES, len(primary)))]
    probs = rng.dirichlet(np.ones(len(known)), len(primary)) * 0.4
    probs[np.arange(len(primary)), [known.index(p) for p in predicted]] += 0.6
    papers = pd.DataFrame({"id": [f"p{i}" for i in range(len(primary))], "category": primary, "categories": categories})
    return papers, known, probs.astype(np.float32)


def assert_inside(comparison: pd.DataFrame, intervals: pd.DataFrame, metrics=METRICS):
    for model in comparison.index:
        for metric in metrics:
            value, low, high = (comparison.at[model, metric], intervals.at[model, f"{metric}_low"],
                                intervals.at[model, f"{metric}_high"])
            assert low <= value <= high, (model, metric, value, low, high)


def test_every_estimate_of_the_study_report_lies_inside_its_interval():
    from arxivcls.evaluate import compare

    papers, known, probs = made_up_file()
    label_names = sorted(set(papers.category) | set(known))
    index = {c: i for i, c in enumerate(label_names)}
    spread = np.zeros((len(papers), len(label_names)), dtype=np.float32)
    spread[:, [index[c] for c in known]] = probs
    test = papers.assign(label=papers.category.map(index))
    tables = compare({"tuned": spread, "baseline": np.roll(spread, 7, axis=0)}, test, label_names,
                     {c: 5 for c in known}, top_k=3, seed=0)
    assert_inside(tables["comparison"], tables["intervals"])
    differences = tables["differences"]
    assert ((differences.low <= differences.difference) & (differences.difference <= differences.high)).all()


def test_every_estimate_of_evaluate_data_lies_inside_its_interval():
    from arxivcls.evaluate_file import evaluate_scores
    from arxivcls.file_scoring import ModelSpec

    papers, known, probs = made_up_file(1)
    specs = [ModelSpec("a", "a", "transformer", tuple(known)), ModelSpec("b", "b", "transformer", tuple(known[:15]))]
    b = probs[:, :15] / probs[:, :15].sum(axis=1, keepdims=True)
    tables = evaluate_scores(papers, {"a": probs, "b": b}, specs)
    assert tables["coverage"].unseen_categories.min() >= 70
    assert_inside(tables["comparison"], tables["intervals"])
    assert_inside(tables["covered"]["comparison"], tables["covered"]["intervals"])


def test_a_macro_metric_averages_over_one_label_set_in_every_resample():
    from arxivcls import stats

    papers, known, probs = made_up_file(2)
    labels = papers.category.map({c: i for i, c in enumerate(known + sorted(set(papers.category) - set(known)))})
    spread = np.zeros((len(papers), labels.max() + 1))
    spread[:, :len(known)] = probs
    paper = stats.point_metrics(labels.to_numpy(), spread, 3)
    assert paper["label_set"].sum() == labels.nunique()  # every category of the file; the model predicts only known ones
    rows = next(stats.stratified_resamples(paper["y_true"], 1, seed=0))
    assert np.array_equal(np.bincount(paper["y_true"][rows]), np.bincount(paper["y_true"]))  # every category, its count
    f1 = stats.scores(paper, rows)["macro_f1"]
    assert 0 < f1 < stats.scores(paper)["macro_f1"] * 1.2


# ---------------------------------------------------------------- with Ray

@pytest.mark.slow
def test_the_search_runs_its_trials_as_ray_tasks(ray_local):
    data = search_data()
    in_ray = search_baseline(data, SEARCH, "val_macro_f1", "max", seed=0, log=lambda *_: None)
    here = search_baseline(data, SEARCH, "val_macro_f1", "max", seed=0, log=lambda *_: None, run_batch=in_process(data))
    pd.testing.assert_frame_equal(in_ray.trials.drop(columns="seconds"), here.trials.drop(columns="seconds"))


@pytest.mark.slow
def test_evaluate_data_on_a_file_of_rare_and_unseen_categories(ray_local, tmp_path):
    from arxivcls.cli import main

    rng = np.random.default_rng(3)
    papers, known, _ = made_up_file(3)
    train = pd.DataFrame({"category_code": np.repeat(known, 20)})
    for frame, name in ((papers.rename(columns={"category": "category_code"}), "papers"), (train, "train")):
        frame = frame.assign(id=[f"{name}-{i}" for i in range(len(frame))], title="t", source="made up",
                             summary=made_up_texts(frame.category_code, rng, shared=8, own=2))
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    assert main(["evaluate", "--data", str(tmp_path / "papers.csv"), "--baseline", str(tmp_path / "train.csv"),
                 "--out", str(tmp_path / "out")]) == 0
    read = lambda name: pd.read_csv(tmp_path / "out" / name, index_col=0)
    assert read("coverage.csv").at["baseline", "unseen_categories"] == 70
    assert read("comparison.csv").at["baseline", "read_unit"] == "words"
    assert_inside(read("comparison.csv"), read("intervals.csv"))
    assert_inside(read("covered_comparison.csv"), read("covered_intervals.csv"))


@pytest.mark.slow
def test_a_study_s_evaluation_tunes_the_baseline_and_adds_the_truncated_control(ray_local, tmp_path):
    from arxivcls.config import load_config
    from arxivcls.data import prepare
    from arxivcls.evaluate import evaluate_study
    from arxivcls.models import load_classifier, load_tokenizer, make_tiny_bert

    config = load_config(None, [f"data.path={SAMPLE}", "data.max_per_class=30", "data.test_fraction=0.3", "data.max_length=24",
                                f"data.cache_dir={tmp_path / 'cache'}", "tune.study=fair", "baseline.num_trials=4",
                                "baseline.trials_per_batch=2"])
    prepared = prepare(config.data, log=lambda *_: None)
    tiny = make_tiny_bert(tmp_path / "tiny", prepared.load_split("train").text.tolist())
    tuned = tmp_path / "models" / "fair" / "tuned"
    load_classifier(str(tiny), prepared.id2label).save_pretrained(tuned)
    tokenizer = load_tokenizer(str(tiny))
    tokenizer.model_max_length = 24
    tokenizer.save_pretrained(tuned)
    results = tmp_path / "results"
    results.mkdir()
    (results / "study.json").write_text(json.dumps({
        "study": "fair", "config": config.to_dict(), "models": {"tuned": str(tuned)}, "prepared_data": prepared.dir,
        "best_trial": {"trial_id": "b"}, "default_trial": {"trial_id": "a"}}))
    pd.DataFrame({"trial_id": ["a", "b"], "is_default": [True, False], "p_learning_rate": [1e-4, 1e-3],
                  "status": ["completed"] * 2, "epochs_run": [1, 1], "best_metric": [0.1, 0.2]}).to_csv(results / "trials.csv")
    from arxivcls.baseline_search import search_study_baseline

    searched = search_study_baseline(prepared, config.to_dict(), log=lambda *_: None)  # as beside the trials
    evaluate_study(results, log=lambda *_: None, baseline_search=searched)

    comparison = pd.read_csv(results / "comparison.csv", index_col="model")
    assert {"tuned", "baseline", "baseline_truncated", "ensemble"} <= set(comparison.index)
    assert comparison.at["tuned", "read_truncated"] > 0.9 and comparison.at["tuned", "read_tokens"] <= 24
    assert comparison.at["baseline", "read_truncated"] == 0 and comparison.at["baseline", "read_unit"] == "words"
    assert comparison.at["baseline_truncated", "read_chars"] == comparison.at["tuned", "read_chars"]
    assert_inside(comparison, pd.read_csv(results / "intervals.csv", index_col=0), ["accuracy", "macro_f1", "weighted_f1"])
    trials = pd.read_csv(results / "baseline_trials.csv")
    best = trials.loc[trials.val_macro_f1.idxmax()]
    saved = load_baseline(tuned.parent / "baseline")[0].params
    assert len(trials) == 4 and saved.alpha == pytest.approx(best.p_alpha) and saved.classifier == best.p_classifier
    assert saved == searched.best
    differences = pd.read_csv(results / "differences.csv")
    assert {("tuned", "baseline"), ("tuned", "baseline_truncated"), ("baseline_truncated", "baseline")} <= set(
        zip(differences.model, differences.reference))
    report = (results / "report.md").read_text()
    assert "## Baseline trials" in report and "text read per paper" in report
    assert "- Model or text (macro F1, paired 95% intervals): tuned vs baseline at full text" in report
    assert "at the transformer's text (its first 24 tokens, decoded), tuned vs baseline_truncated" in report
