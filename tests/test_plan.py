"""`arxivcls plan`: the budget rules, the resources it plans for, and one-line errors."""
import json
from pathlib import Path

import pytest

from arxivcls.cli import main
from arxivcls.config import TrainConfig, load_config
from arxivcls.errors import UserError
from arxivcls.plan import declared_resources, max_trial_epochs, plan_study


def test_epoch_budget_of_each_rule():
    # 6 trials of 3 epochs, rungs at 1 and 2: sync runs 6, then 3, then 2 trials one epoch each
    assert max_trial_epochs(6, 3, grace_period=1, reduction_factor=2) == {"asha": 18, "sync": 11, "no early stopping": 18}
    # 16 trials of 4 epochs, factor 3: rungs 1 and 3 -> 16 + 6 * 2 + 2 * 1
    assert max_trial_epochs(16, 4, grace_period=1, reduction_factor=3)["sync"] == 30
    assert max_trial_epochs(4, 2, grace_period=2, reduction_factor=2)["sync"] == 8  # no rung below the budget


def test_declared_cluster_must_fit_a_worker_on_one_node():
    gpu_worker = TrainConfig(cpus_per_worker=4, gpus_per_worker=1)
    assert declared_resources(64, 8, 1, gpu_worker).gpus == 8
    assert declared_resources(64, 8, 8, gpu_worker).nodes == 8
    with pytest.raises(UserError, match="a worker needs GPU=1 but each of the 16 node"):
        declared_resources(64, 8, 16, gpu_worker)
    with pytest.raises(UserError, match="a worker needs CPU=4"):
        declared_resources(2, 8, 1, gpu_worker)


@pytest.mark.parametrize("argv, message", [
    (["plan", "tune/cpu.yaml", "--set", "train.no_such_key=1"], "unknown config key 'train.no_such_key'"),
    (["plan", "tune/cpu.yaml", "--data", "/no/such/papers.parquet"], "data file not found"),
    (["plan", "tune/scibert.yaml", "--gpus", "1", "--cpus", "64", "--nodes", "2"], "a worker needs GPU=1 but each of the 2 node(s) has 0.5"),
    (["plan", "tune/scibert.yaml", "--gpus", "8", "--address", "127.0.0.1:1"], "either --address"),
    (["plan", "tune/cpu.yaml", "--papers-per-s", "0"], "--papers-per-s must be > 0"),
    (["plan", "no/such.yaml"], "config file not found"),
])
def test_bad_plan_input_is_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_gpu_trial_on_a_machine_without_gpus_is_refused(tiny_bert, capsys):
    assert main(["plan", "tune/scibert.yaml", "--set", f"model.name={tiny_bert}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: one trial needs CPU=4, GPU=1") and "\n" not in err


@pytest.mark.slow
def test_plan_of_the_cpu_study_matches_the_committed_study():
    """tune/cpu.yaml planned on this machine against results/cpu/study.json, the README's main command."""
    study_file = Path("results/cpu/study.json")
    config = load_config("tune/cpu.yaml")
    if not Path(config.data.path).is_file():
        pytest.skip(f"data not found at {config.data.path}")
    study = json.loads(study_file.read_text())
    plan = plan_study(config)
    assert plan["trials"] == study["num_trials"] == config.tune.num_samples
    assert plan["concurrency"] == study["concurrency"]
    assert study["trial_epochs"] <= plan["max_trial_epochs"][config.tune.scheduler]
    assert plan["data"]["split_sizes"] == study["data"]["split_sizes"]
    assert plan["data"]["categories"] == study["data"]["categories"]
    assert plan["disk_gb"] == pytest.approx(study["disk"]["estimated_need_gb"], rel=0.01)
    assert plan["papers_per_s_per_worker"] > 0 and plan["wall_hours"] > 0 and plan["gpu_hours"] == 0
