"""Two tiny studies (slow): the first tracked with TensorBoard and MLflow under its directory, the
second warm-started from the first's Optuna storage. And the MLflow logger alone, without Ray."""
from pathlib import Path

import optuna
import pandas as pd
import pytest

from arxivcls.config import load_config
from arxivcls.search import WARM_START_ATTR
from arxivcls.tuning import run_study
from conftest import tiny_study_yaml

SPACE = {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-3}}


@pytest.fixture(scope="module")
def studies(ray_local, tmp_path_factory, papers_file, tiny_bert):
    pytest.importorskip("mlflow")
    tmp_path = tmp_path_factory.mktemp("tracking")
    path = tiny_study_yaml(tmp_path, papers_file, tiny_bert, train={"epochs": 2},
                           tune={"study": "first", "num_samples": 2, "search_space": SPACE,
                                 "tracking": ["tensorboard", "mlflow"]})
    first_logs, second_logs = [], []
    first = run_study(load_config(str(path)), evaluate=False, log=first_logs.append)
    second = run_study(load_config(str(path), ["tune.study=second", "tune.tracking=[]"]), evaluate=False,
                       log=second_logs.append, warm_start="first")
    return {"runs": tmp_path / "runs", "first": first, "second": second,
            "first_logs": first_logs, "second_logs": second_logs}


@pytest.mark.slow
def test_mlflow_has_one_run_per_trial_with_its_params_and_every_epoch(studies):
    from mlflow import MlflowClient

    trials = pd.read_csv(studies["first"] / "trials.csv")
    uri = f"sqlite:///{studies['runs'] / 'first' / 'mlflow' / 'mlflow.db'}"
    assert f"MLflow: mlflow ui --backend-store-uri {uri}" in studies["first_logs"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("first").experiment_id])
    by_trial = {run.data.tags["trial_name"].rsplit("_", 1)[-1]: run for run in runs}
    assert sorted(by_trial) == sorted(trials.trial_id) and len(runs) == len(trials)
    for trial in trials.itertuples():
        run = by_trial[trial.trial_id]
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial.p_learning_rate, rel=1e-4)  # csv: 5 digits
        history = client.get_metric_history(run.info.run_id, "val_macro_f1")
        assert [m.step for m in history] == list(range(1, trial.epochs_run + 1))  # one entry per epoch, stepped by epoch
        assert run.data.metrics["val_macro_f1"] == pytest.approx(history[-1].value)
        assert max(m.value for m in history) == pytest.approx(trial.best_metric, abs=1e-5)
        assert run.info.status == "FINISHED"


@pytest.mark.slow
def test_tensorboard_events_in_each_trial_directory_named_by_trial_id(studies):
    trials = pd.read_csv(studies["first"] / "trials.csv")
    experiment = studies["runs"] / "first"
    assert f"TensorBoard: tensorboard --logdir {experiment}" in studies["first_logs"]
    assert {p.name for p in experiment.glob("trial_driver_*")} == {f"trial_driver_{t}" for t in trials.trial_id}
    for trial_id in trials.trial_id:
        assert list((experiment / f"trial_driver_{trial_id}").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_the_optuna_study_is_stored_in_the_study_directory(studies):
    url = f"sqlite:///{studies['runs'] / 'first' / 'search' / 'optuna.db'}"
    assert f"Optuna: optuna-dashboard {url}" in studies["first_logs"]
    trials = pd.read_csv(studies["first"] / "trials.csv")
    stored = optuna.load_study(study_name="first", storage=url).get_trials()
    assert len(stored) == len(trials) and all(t.state.is_finished() for t in stored)
    assert sorted(t.params["learning_rate"] for t in stored) == pytest.approx(sorted(trials.p_learning_rate), rel=1e-4)


@pytest.mark.slow
def test_the_warm_started_study_holds_the_first_s_finished_trials_before_its_own(studies):
    first = optuna.load_study(study_name="first", storage=f"sqlite:///{studies['runs'] / 'first' / 'search' / 'optuna.db'}")
    second = optuna.load_study(study_name="second", storage=f"sqlite:///{studies['runs'] / 'second' / 'search' / 'optuna.db'}")
    copied = [t for t in first.get_trials() if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert f"warm start: {len(copied)} finished trials of study 'first' added to the search" in studies["second_logs"]
    trials = second.get_trials()
    assert len(trials) == len(copied) + 2
    assert [t.user_attrs.get(WARM_START_ATTR) for t in trials] == ["first"] * len(copied) + [None, None]
    assert [t.params for t in trials[:len(copied)]] == [t.params for t in copied]
    assert [t.state for t in trials[:len(copied)]] == [t.state for t in copied]
    assert len(pd.read_csv(studies["second"] / "trials.csv")) == 2  # the report counts the study's own trials
    assert not (Path(studies["runs"]) / "second" / "mlflow").exists()  # tune.tracking=[]: no MLflow store


class FakeTrial:
    """What Tune's logger callbacks read of a trial."""

    def __init__(self, name: str, config: dict):
        self.name, self.config = name, config

    def __str__(self):
        return self.name


def test_the_mlflow_logger_steps_by_epoch_and_continues_a_resumed_trial_s_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from arxivcls.tuning import epoch_mlflow_logger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = FakeTrial("trial_driver_abc", {"learning_rate": 1e-3})
    logger = epoch_mlflow_logger(uri, "study")
    logger.setup()
    logger.log_trial_start(trial)
    logger.log_trial_result(1, trial, {"epoch": 1, "val_macro_f1": 0.2, "config": {"learning_rate": 1e-3}, "trial_id": "abc"})
    resumed = epoch_mlflow_logger(uri, "study")  # --resume: a new driver, the same store
    resumed.setup()
    resumed.log_trial_start(trial)
    resumed.log_trial_result(1, trial, {"epoch": 2, "val_macro_f1": 0.3})  # Tune's iteration counts from 1 again
    resumed.log_trial_end(trial)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("study").experiment_id])
    assert run.data.params == {"learning_rate": "0.001"} and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_macro_f1")] == [(1, 0.2), (2, 0.3)]
    assert "trial_id" not in run.data.metrics  # a string is no metric
