"""The study's Optuna storage without Ray: the searcher on SQLite, its save/restore as Tune's --resume
does it, and warm starts from an earlier study."""
import math

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from arxivcls.config import Config
from arxivcls.errors import UserError
from arxivcls.search import (WARM_START_ATTR, begin_optuna_study, load_source_study, make_searcher, optuna_storage_url,
                             tune_search_space, warm_start)

COMPLETE, PRUNED, RUNNING, WAITING, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                            optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING,
                                            optuna.trial.TrialState.FAIL)


def study_config(name: str, space: dict | None = None) -> Config:
    config = Config()
    config.tune.study, config.tune.num_samples = name, 6
    config.tune.search_space = space or {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                                         "batch_size": {"type": "choice", "values": [8, 16]}}
    return config


def started_searcher(config: Config, url: str):
    """A searcher as a study's Tuner sets it up: Tune hands it the search space when fit() starts."""
    searcher = make_searcher(config, storage_url=url)
    searcher.set_search_properties(None, None, tune_search_space(config.tune.search_space))
    return searcher


def result(epoch: int, f1: float, planned: int = 2) -> dict:
    return {"epoch": epoch, "planned_epochs": planned, "val_macro_f1": f1, "training_iteration": epoch}


def run_trials(searcher, scores: dict) -> None:
    """Each trial id: its per-epoch scores; fewer than 2 epochs = stopped early (PRUNED)."""
    for trial_id, f1s in scores.items():
        assert searcher.suggest(trial_id) is not None
        for epoch, f1 in enumerate(f1s, 1):
            searcher.on_trial_result(trial_id, result(epoch, f1))
        searcher.on_trial_complete(trial_id, {**result(len(f1s), f1s[-1]), "best_val_macro_f1": max(f1s)})


@pytest.fixture
def storage_root(tmp_path):
    return tmp_path / "runs"


def new_study(config: Config, storage_root) -> str:
    url = optuna_storage_url(str(storage_root / config.tune.study))
    begin_optuna_study(config, url)
    return url


def test_the_searcher_keeps_its_study_in_the_study_directory(storage_root):
    config = study_config("first")
    url = new_study(config, storage_root)
    run_trials(started_searcher(config, url), {"a": [0.2, 0.3], "b": [0.1]})
    assert (storage_root / "first" / "search" / "optuna.db").is_file()
    study = optuna.load_study(study_name="first", storage=url)  # what optuna-dashboard opens
    trials = study.get_trials()
    assert [t.state for t in trials] == [COMPLETE, PRUNED]
    assert trials[0].params == {"learning_rate": config.train.learning_rate, "batch_size": config.train.batch_size}
    assert trials[0].value == pytest.approx(0.3) and trials[1].intermediate_values == {1: 0.1}
    assert study.user_attrs["metric"] == "val_macro_f1"


def test_resume_restores_the_saved_searcher_without_a_second_default_or_orphans(storage_root, tmp_path):
    config = study_config("resumed")
    url = new_study(config, storage_root)
    searcher = started_searcher(config, url)
    run_trials(searcher, {"a": [0.2, 0.3]})
    searcher.suggest("b")  # running when Tune saved the searcher
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.on_trial_complete("b", result(2, 0.4))  # told after the last save...
    searcher.suggest("c")  # ...and asked after it: then the driver died

    resumed = started_searcher(config, url)  # Tuner.restore: the searcher pickled at the start, set up again
    resumed.restore(str(tmp_path / "searcher.pkl"))
    states = [t.state for t in optuna.load_study(study_name="resumed", storage=url).get_trials()]
    assert states == [COMPLETE, COMPLETE, FAIL]  # no second default waiting; c, unknown to Tune, FAILed
    resumed.on_trial_result("b", result(2, 0.4))  # Tune runs b again (or replays it): no error, no second tell
    resumed.on_trial_complete("b", result(2, 0.4))
    assert resumed.suggest("d") is not None
    trials = optuna.load_study(study_name="resumed", storage=url).get_trials()
    assert len(trials) == 4 and trials[3].state == RUNNING
    assert trials[3].params != trials[0].params  # a new point, not the default again


def test_an_enqueued_point_asked_after_the_last_save_is_asked_again(storage_root, tmp_path):
    config = study_config("early")
    url = new_study(config, storage_root)
    searcher = started_searcher(config, url)
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("a")  # the default, asked before Tune first saved: then the driver died
    resumed = started_searcher(config, url)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.suggest("a2") == {"learning_rate": config.train.learning_rate, "batch_size": config.train.batch_size}


def test_warm_start_adds_the_earlier_finished_trials_before_the_new_study_s_own(storage_root):
    first = study_config("first")
    run_trials(started_searcher(first, new_study(first, storage_root)), {"a": [0.2, 0.3], "b": [0.1], "c": [0.25, 0.35]})
    second = study_config("second", {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                                     "weight_decay": {"type": "loguniform", "low": 1e-3, "high": 1e-1}})
    url = optuna_storage_url(str(storage_root / "second"))
    source = load_source_study("first", str(storage_root))  # by name, under the same storage
    added, left_out = warm_start(begin_optuna_study(second, url), source, second.tune.search_space, second.tune.metric)
    assert (added, left_out) == (3, 0)
    run_trials(started_searcher(second, url), {"x": [0.5, 0.6]})
    trials = optuna.load_study(study_name="second", storage=url).get_trials()
    assert [t.state for t in trials] == [COMPLETE, PRUNED, COMPLETE, COMPLETE]
    assert [t.user_attrs.get(WARM_START_ATTR) for t in trials] == ["first"] * 3 + [None]
    assert set(trials[0].params) == {"learning_rate"}  # batch_size is not searched here: dropped
    assert trials[1].intermediate_values == {1: 0.1}
    assert trials[3].params["learning_rate"] == second.train.learning_rate  # the default still runs first


def test_warm_start_leaves_out_trials_outside_the_new_space(storage_root):
    first = study_config("first")
    run_trials(started_searcher(first, new_study(first, storage_root)), {"a": [0.2, 0.3], "b": [0.4, 0.5]})
    narrow = study_config("narrow", {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                                     "batch_size": {"type": "choice", "values": [16, 32]}})  # the default's 8 is gone
    source = load_source_study(str(storage_root / "first"), str(storage_root))  # by directory
    target = begin_optuna_study(narrow, optuna_storage_url(str(storage_root / "narrow")))
    added, left_out = warm_start(target, source, narrow.tune.search_space, narrow.tune.metric)
    assert added + left_out == 2 and left_out >= 1
    assert all(t.params.get("batch_size") in (16, 32) for t in target.get_trials())


def test_warm_start_from_nothing_or_another_objective_is_a_user_error(storage_root):
    with pytest.raises(UserError, match="no Optuna storage"):
        load_source_study("missing", str(storage_root))
    first = study_config("first")
    new_study(first, storage_root)
    other = study_config("other")
    other.tune.metric, other.tune.mode = "val_loss", "min"
    target = begin_optuna_study(other, optuna_storage_url(str(storage_root / "other")))
    with pytest.raises(UserError, match="objective"):
        warm_start(target, load_source_study("first", str(storage_root)), other.tune.search_space, other.tune.metric)


def test_the_report_s_importances_come_from_the_stored_study_without_warm_started_trials(storage_root, tmp_path):
    from arxivcls.plots import plot_param_importance, stored_param_importances, stored_study

    config = study_config("stored", {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
                                     "batch_size": {"type": "choice", "values": [8, 16, 32]},
                                     "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.1}})
    url = new_study(config, storage_root)
    study = optuna.load_study(study_name="stored", storage=url)
    distributions = OptunaSearch.convert_search_space(tune_search_space(config.tune.search_space))
    sampler = optuna.samplers.RandomSampler(seed=0)
    for number in range(14):
        params = {name: sampler.sample_independent(study, None, name, d) for name, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=-math.log10(params["learning_rate"]),  # only the learning rate matters
                                                  user_attrs={WARM_START_ATTR: "earlier"} if number < 2 else {}))
    assert stored_study(None, "stored") is None and stored_study(f"sqlite:///{tmp_path}/absent.db", "stored") is None
    assert not (tmp_path / "absent.db").exists()
    own = stored_study(url, "stored")
    assert len(own.trials) == 12  # the two warm-started trials are the earlier study's, not this one's
    importances = stored_param_importances(own)
    assert max(importances, key=importances.get) == "learning_rate" and sum(importances.values()) == pytest.approx(1)
    assert plot_param_importance(tmp_path, None, [], "val_macro_f1", "max", optuna_study=own) == "param_importance.png"
