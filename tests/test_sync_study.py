"""A tiny study with tune.scheduler: sync: trials pause at each rung, the best half resume from
their checkpoints, and no trial trains past a rung the study has not decided."""
import json
import math

import pandas as pd
import pytest

from arxivcls.config import load_config
from arxivcls.rundir import LAST_REPORT
from arxivcls.tuning import run_study
from conftest import tiny_study_yaml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory, papers_file, tiny_bert):
    tmp_path = tmp_path_factory.mktemp("sync")
    path = tiny_study_yaml(tmp_path, papers_file, tiny_bert, train={"epochs": 3, "patience": 10},
                           tune={"scheduler": "sync", "grace_period": 1, "reduction_factor": 2, "num_samples": 4,
                                 "search_space": {"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}})
    config = load_config(str(path))
    results = run_study(config, evaluate=False, log=lambda *_: None)
    return {"config": config, "results": results, "runs": tmp_path / "runs" / "tiny",
            "trials": pd.read_csv(results / "trials.csv"), "history": pd.read_csv(results / "history.csv"),
            "info": json.loads((results / "study.json").read_text())}


def test_the_best_half_at_each_rung_go_on_and_the_rest_stop_there(study):
    trials, history = study["trials"], study["history"]
    assert len(trials) == 4 and (trials.status != "error").all()
    f1 = history.pivot(index="trial_id", columns="epoch", values="val_macro_f1")
    went_past = lambda epoch: set(trials.trial_id[trials.epochs_run > epoch])
    assert went_past(1) == set(f1[1].nlargest(math.ceil(4 / 2)).index)  # rung 1: 2 of 4
    assert went_past(2) == set(f1.loc[sorted(went_past(1)), 2].nlargest(1).index)  # rung 2: 1 of 2
    stopped = trials[trials.epochs_run < 3]
    assert set(stopped.status) == {"stopped_by_halving"} and set(stopped.epochs_run) <= {1, 2}
    assert trials.epochs_run.sum() == 4 + 2 + 1 and study["info"]["trial_epochs"] == 7


def test_no_trial_trained_past_an_undecided_rung_and_resumed_ones_redid_nothing(study):
    for row in study["trials"].itertuples():
        run = study["runs"] / f"train-{row.trial_id}"
        last = json.loads((run / LAST_REPORT).read_text())
        assert last["epoch"] == row.epochs_run  # a loop that ran ahead would have reported one more epoch to Train
        markers = sorted(p.name for p in run.glob("continue_after_epoch_*"))
        assert markers == [f"continue_after_epoch_{e}" for e in (1, 2) if row.epochs_run > e]
        assert len(list(run.glob("checkpoint_2*"))) <= study["config"].train.checkpoint_keep
        assert not (run / ".rung-state").exists()
    # a resumed trial starts from its rung epoch (its best checkpoint, or the rung state when the
    # rung epoch was not its best): no epoch is trained twice
    assert study["info"]["trained_epochs"] == study["info"]["trial_epochs"]


def test_one_trial_completes_and_the_best_is_exported(study):
    trials = study["trials"]
    assert trials.status[trials.epochs_run == 3].tolist() == ["completed"]
    assert study["info"]["best_trial"]["val_macro_f1"] == pytest.approx(trials.best_metric.max(), abs=1e-5)
    assert (study["results"].parent.parent / "models" / "tiny" / "tuned" / "config.json").is_file()
