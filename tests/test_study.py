"""A whole tiny study in-process: Tune + OptunaSearch + ASHA over Ray Train trials, then evaluation."""
import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from arxivcls.config import load_config
from arxivcls.data import Prepared, prepare
from arxivcls.evaluate import evaluate_study
from arxivcls.tuning import run_study
from conftest import tiny_study_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory, papers_file, tiny_bert):
    tmp_path = tmp_path_factory.mktemp("study")
    # 4 trials of one 1-CPU worker each on 2 CPUs: the shape that deadlocked before.
    config = load_config(str(tiny_study_yaml(tmp_path, papers_file, tiny_bert)), ["tune.num_samples=4"])
    prepared = prepare(config.data, log=lambda *_: None)
    test_file = prepared.split_path("test")
    hidden = test_file.with_name("hidden-test.parquet")
    shutil.move(test_file, hidden)  # nothing may read the test split during the study...
    reads = []
    original = Prepared.load_split
    Prepared.load_split = lambda self, name: reads.append(name) or original(self, name)
    logs, most_checkpoints, seen_checkpoints, done = [], {}, {}, threading.Event()

    def watch_checkpoints():  # retention is checked while the study runs, not only at the end
        while not done.is_set():
            for run in (tmp_path / "runs").glob("*/train-*"):
                names = {p.name for p in run.glob("checkpoint_2*") if p.is_dir()}  # checkpoint_<date> directories
                most_checkpoints[run.name] = max(len(names), most_checkpoints.get(run.name, 0))
                seen_checkpoints.setdefault(run.name, set()).update(names)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_checkpoints, daemon=True)
    watcher.start()
    try:
        results = run_study(config, evaluate=False, log=logs.append)
    finally:
        done.set()
        watcher.join()
        Prepared.load_split = original
        shutil.move(hidden, test_file)
    return {"config": config, "results": results, "reads": reads, "logs": logs, "tmp": tmp_path,
            "most_checkpoints": most_checkpoints, "seen_checkpoints": seen_checkpoints}


def test_study_runs_trials_concurrently_and_starts_with_the_default(study):
    info = json.loads((study["results"] / "study.json").read_text())
    trials = pd.read_csv(study["results"] / "trials.csv")
    assert info["concurrency"] == 2 and info["trial_resources"] == {"CPU": 1.0}
    assert len(trials) == 4 and trials.is_default.tolist() == [True, False, False, False]
    first = trials.iloc[0]
    assert first.p_learning_rate == pytest.approx(1e-3) and first.p_epochs == 2  # the config's train values
    assert set(trials.status) <= {"completed", "stopped_by_asha", "stopped_by_patience"}
    assert (trials.epochs_run >= 1).all() and trials.best_metric.notna().all()
    assert trials.node_ip.notna().all()  # where each trial's rank-0 Train worker ran
    assert info["best_trial"]["val_macro_f1"] == pytest.approx(trials.best_metric.max(), abs=1e-5)  # csv: 5 decimals
    assert info["trial_epochs"] == trials.epochs_run.sum()


def test_data_tokenized_once_and_test_split_untouched(study):
    info = json.loads((study["results"] / "study.json").read_text())
    assert info["tokenization"] == {"tokenized": 2, "cache_hits": 0}  # train + val, once for 4 trials
    assert study["reads"] == ["train", "val"]  # tokenization read train and val; nobody read test


def test_ray_keeps_the_best_and_the_latest_checkpoints_and_the_best_model_is_exported(study):
    from transformers import AutoModelForSequenceClassification

    trials = pd.read_csv(study["results"] / "trials.csv")
    keep = study["config"].train.checkpoint_keep
    assert len(study["most_checkpoints"]) == len(trials)
    # at every poll while trials ran: the best `keep`, the latest, and one being written
    assert max(study["most_checkpoints"].values()) <= keep + 2
    history = pd.read_csv(study["results"] / "history.csv")
    for trial in trials.itertuples():
        checkpoints = [p for p in (study["tmp"] / "runs" / "tiny").glob(f"train-{trial.trial_id}/checkpoint_2*") if p.is_dir()]
        assert 1 <= len(checkpoints) <= keep + 1  # after the study, stopped trials too
        assert len(study["seen_checkpoints"][f"train-{trial.trial_id}"]) == trial.epochs_run  # one per epoch
        assert Path(trial.best_checkpoint).is_dir()  # the best epoch's checkpoint is one Ray kept
        scores = history[history.trial_id == trial.trial_id].val_macro_f1
        assert trial.best_metric == pytest.approx(scores.max(), abs=1e-5)
    import reliability

    reliability.record("disk", "checkpoint retention during a 4-trial study (polled every 0.05 s)",
                       f"every epoch checkpointed; at most {max(study['most_checkpoints'].values())} per trial on disk "
                       f"at any poll (keep={keep}: Ray keeps the best {keep} and the latest, and writes the next before "
                       f"deleting one); at most {keep + 1} after each trial")
    info = json.loads((study["results"] / "study.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(info["models"]["tuned"])
    assert len(model.config.id2label) == info["data"]["categories"]


def test_evaluation_writes_the_full_results_and_is_reproducible(study, ray_local):
    results = study["results"]
    evaluate_study(results, log=lambda *_: None)
    expected = {"study.json", "trials.csv", "history.csv", "comparison.csv", "categories.csv", "size_bins.csv",
                "confusion_pairs.csv", "predictions.parquet", "report.md", "evaluation.json"}
    assert expected <= {p.name for p in results.iterdir()}
    assert any(p.suffix == ".png" for p in results.iterdir())
    comparison = pd.read_csv(results / "comparison.csv", index_col=0)
    evaluation = json.loads((results / "evaluation.json").read_text())
    # a model identical to another (the default trial won, tau 0, ...) is reported once, and says so
    assert {"default", "tuned", "tuned+logit_adj", "baseline", "ensemble"} <= set(comparison.index) | set(evaluation["identical"])
    assert {"intervals.csv", "differences.csv"} <= {p.name for p in results.iterdir()}
    assert "95% interval" in (results / "report.md").read_text()
    assert {"accuracy", "macro_f1", "weighted_f1", "top3_accuracy", "ece", "mean_confidence"} <= set(comparison.columns)
    predictions = pd.read_parquet(results / "predictions.parquet")
    assert len(predictions) == json.loads((results / "study.json").read_text())["data"]["split_sizes"]["test"]
    evaluate_study(results, log=lambda *_: None)  # `arxivcls evaluate` again: the same table
    pd.testing.assert_frame_equal(comparison, pd.read_csv(results / "comparison.csv", index_col=0))


def test_plan_matches_what_the_study_did(study):
    from arxivcls.plan import plan_study

    info = json.loads((study["results"] / "study.json").read_text())
    plan = plan_study(study["config"])  # on the same local Ray cluster, now idle again
    assert plan["resources"]["source"] == "ray"
    assert plan["trials"] == info["num_trials"] and plan["concurrency"] == info["concurrency"]
    assert info["trial_epochs"] <= plan["max_trial_epochs"]
    assert plan["data"]["split_sizes"] == info["data"]["split_sizes"]


def test_predict_on_the_saved_models_gives_the_evaluation_s_top_1(study, ray_local, capsys):
    from arxivcls import Classifier
    from arxivcls.cli import main
    from arxivcls.data import load_prepared

    results = study["results"]
    if not (results / "evaluation.json").is_file():
        evaluate_study(results, log=lambda *_: None)
    evaluation = json.loads((results / "evaluation.json").read_text())
    info = json.loads((results / "study.json").read_text())
    test = load_prepared(info["prepared_data"]).load_split("test").head(20)
    papers = study["tmp"] / "papers.csv"
    pd.DataFrame({"id": test.id, "title": test.text, "abstract": ""}).to_csv(papers, index=False)
    predictions = pd.read_parquet(results / "predictions.parquet").set_index("id").loc[test.id]
    models = Path(info["models"]["tuned"]).parent
    tokenizer_config = json.loads((models / "tuned" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == info["config"]["data"]["max_length"]  # predict truncates as training did
    for name in ("tuned", "ensemble", "baseline"):
        if name in evaluation["identical"]:
            continue
        out = study["tmp"] / f"{name}.csv"
        assert main(["predict", "--model", str(models / name), "--input", str(papers), "--output", str(out)]) == 0
        assert pd.read_csv(out).top1.tolist() == predictions[f"{name}_pred"].tolist()
        classifier = Classifier(models / name)  # the Python API: loaded once, many papers
        top1 = [paper[0].category for paper in classifier.predict_many(test.text.tolist(), top_k=2)]
        assert top1 == predictions[f"{name}_pred"].tolist()
        assert classifier.predict(test.text.iloc[0])[0].category == top1[0]
