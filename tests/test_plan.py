"""`arxivcls plan`: the budget, the resources it plans for, what a searched max_length costs, GPU
figures carried to a study, and one-line errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from arxivcls.cli import main
from arxivcls.config import TrainConfig, load_config
from arxivcls.errors import UserError
from arxivcls.plan import (declared_resources, halving_trial_epochs, length_stats, max_trial_epochs,
                           measured_gpu_throughput, plan_study, searched_max_lengths, train_flops)

COMMITTED_STUDY = Path("results/cpu/study.json")  # the README's main command, committed
BERT_BASE = {"matmul_parameters": 85_000_000, "layers": 12, "hidden": 768}


def test_asha_may_run_every_trial_to_the_end_and_halving_at_its_rungs_spends_less():
    assert max_trial_epochs(6, 3) == 18
    # 6 trials of 3 epochs, rungs at 1 and 2: 6, then 3, then 2 trials one epoch each
    assert halving_trial_epochs(6, 3, grace_period=1, reduction_factor=2) == 11
    assert halving_trial_epochs(16, 4, grace_period=1, reduction_factor=3) == 16 + 6 * 2 + 2 * 1  # rungs 1 and 3
    assert halving_trial_epochs(4, 2, grace_period=2, reduction_factor=2) == 8  # no rung below the budget


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
    (["plan", "tune/scibert.yaml", "--gpu-figures", "/no/such/gpu_check.json"], "--gpu-figures: file not found"),
    (["plan", "tune/scibert.yaml", "--gpu-figures", "README.md"], "--gpu-figures: cannot read README.md as JSON"),
    (["plan", "tune/scibert.yaml", "--gpu-figures", "x.json", "--papers-per-s", "5"], "either --papers-per-s or --gpu-figures"),
])
def test_bad_plan_input_is_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_gpu_figures_without_a_measured_row_or_for_cpu_workers_are_refused(tmp_path, capsys):
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps(made_up_figures([{**measured_row(16, 100.0, 200.0), "status": "failed: OutOfMemoryError"}])))
    measured = tmp_path / "gpu_check.json"
    measured.write_text(json.dumps(made_up_figures([measured_row(16, 100.0, 200.0)])))
    for argv, message in ((["tune/scibert.yaml", "--gpu-figures", str(failed)], "hold no measured arxivcls training row"),
                          (["tune/cpu.yaml", "--gpu-figures", str(measured)], "prices GPU workers, but this config trains on CPUs")):
        assert main(["plan", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_gpu_trial_on_a_machine_without_gpus_is_refused(tiny_bert, capsys):
    assert main(["plan", "tune/scibert.yaml", "--data", "data/arxiv_sample.parquet", "--set", f"model.name={tiny_bert}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: one trial needs CPU=4, GPU=1") and "\n" not in err


def measured_row(batch_size: int, papers_per_s: float, mean_tokens: float, compile=False) -> dict:
    return {"recipe": "arxivcls", "batch_size": batch_size, "compile": compile, "status": "ok",
            "papers_per_s": papers_per_s, "mean_tokens": mean_tokens}


def made_up_figures(rows: list[dict], shape: dict = BERT_BASE) -> dict:
    return {"device": {"name": "NVIDIA H200"}, "smoke": False, "model": shape, "training": rows}


def test_measured_gpu_throughput_takes_the_nearest_batch_and_carries_its_flops():
    figures = made_up_figures([measured_row(16, 1000.0, 200.0), measured_row(32, 1500.0, 200.0),
                               measured_row(32, 9999.0, 200.0, compile="inductor"),  # a study does not compile
                               {**measured_row(64, 9999.0, 200.0), "status": "failed: OutOfMemoryError"}])
    at = lambda train, tokens, shape=BERT_BASE: measured_gpu_throughput(figures, train, shape, tokens)[0]
    one_gpu = TrainConfig(batch_size=32, gpus_per_worker=1)
    assert at(one_gpu, 200.0) == pytest.approx(1500.0)  # the same model at the same lengths: the measured figure
    assert at(TrainConfig(batch_size=64, gpus_per_worker=1), 200.0) == pytest.approx(1500.0)  # 64 failed: 32 is nearest
    assert at(TrainConfig(batch_size=8, gpus_per_worker=1), 200.0) == pytest.approx(1000.0)
    assert at(TrainConfig(batch_size=32, gpus_per_worker=0.5), 200.0) == pytest.approx(750.0)  # half a GPU
    # twice the tokens cost more than twice: attention grows with the length
    longer = at(one_gpu, 400.0)
    assert longer == pytest.approx(1500.0 * train_flops(BERT_BASE, 1, 200) / train_flops(BERT_BASE, 1, 400))
    assert longer < 750.0
    source = measured_gpu_throughput(figures, one_gpu, BERT_BASE, 400.0)[1]
    assert "NVIDIA H200" in source and "batch 32" in source and "1500.0 papers/s at 200 tokens" in source


def test_searched_max_length_values_and_their_token_counts():
    assert searched_max_lengths({"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-4}}) == []
    assert searched_max_lengths({"max_length": {"type": "choice", "values": [256, 64, 128, 64]}}) == [64, 128, 256]
    assert searched_max_lengths({"max_length": {"type": "int", "low": 64, "high": 256}}) == [64, 160, 256]
    untruncated = np.array([10, 50, 100, 300])
    stats = length_stats(untruncated, 64)
    assert stats["mean"] == pytest.approx((10 + 50 + 64 + 64) / 4) and stats["truncated_fraction"] == 0.5


def test_plan_prices_each_searched_max_length_from_the_data_s_token_lengths(tiny_bert, tmp_path):
    """Three max_length values on the embedded sample: tokens from the tokenizer, time by FLOPs from
    the throughput at data.max_length, and the estimate at the longest value."""
    from arxivcls.data import prepare
    from arxivcls.features import tokenize_texts
    from arxivcls.models import load_tokenizer
    from arxivcls.plan import format_plan, model_shape

    config = load_config("tune/cpu.yaml", [f"model.name={tiny_bert}", f"data.cache_dir={tmp_path / 'cache'}",
                                           "data.max_length=128",
                                           "tune.search_space.max_length={type: choice, values: [128, 256, 512]}"])
    plan = plan_study(config, declared_resources(2, 0, 1, config.train), papers_per_s=100.0)
    costs = {c["max_length"]: c for c in plan["max_length_costs"]}
    assert list(costs) == [128, 256, 512] and plan["max_length_searched"]

    # the mean tokens at each value are what the tokenizer keeps of the training papers at that value
    train_texts = prepare(config.data, log=lambda *_: None).load_split("train").text.tolist()
    tokenizer = load_tokenizer(str(tiny_bert))
    for value, cost in costs.items():
        kept = np.mean([len(ids) for ids in tokenize_texts(tokenizer, train_texts, value)])
        assert cost["mean_tokens"] == pytest.approx(kept)  # 480 training papers: the plan's sample holds them all
    assert costs[128]["truncated_fraction"] > costs[256]["truncated_fraction"] > costs[512]["truncated_fraction"]

    shape = model_shape(str(tiny_bert))
    assert costs[128]["papers_per_s_per_worker"] == pytest.approx(100.0)  # the throughput holds at data.max_length
    assert costs[512]["papers_per_s_per_worker"] == pytest.approx(
        100.0 * train_flops(shape, 1, costs[128]["mean_tokens"]) / train_flops(shape, 1, costs[512]["mean_tokens"]))
    seconds = [costs[v]["epoch_seconds"] for v in (128, 256, 512)]
    assert seconds == sorted(seconds) and seconds[0] < seconds[2]
    assert plan["epoch_seconds"] == costs[512]["epoch_seconds"]  # every trial may draw the longest
    assert costs[512]["training_tokens_per_epoch"] == pytest.approx(
        plan["data"]["split_sizes"]["train"] * costs[512]["mean_tokens"])

    text = format_plan(plan, config)
    line = next(line for line in text.splitlines() if line.startswith("max_length searched"))
    assert all(f"{value}: mean {costs[value]['mean_tokens']:.0f} tokens" in line for value in costs)


def test_a_plan_without_a_searched_max_length_prints_no_line_for_it(tiny_bert, tmp_path):
    from arxivcls.plan import format_plan

    config = load_config("tune/cpu.yaml", [f"model.name={tiny_bert}", f"data.cache_dir={tmp_path / 'cache'}"])
    plan = plan_study(config, declared_resources(2, 0, 1, config.train), papers_per_s=50.0)
    assert not plan["max_length_searched"] and [c["max_length"] for c in plan["max_length_costs"]] == [96]
    assert plan["papers_per_s_per_worker"] == 50.0 and plan["throughput_source"] == "given"
    assert "max_length searched" not in format_plan(plan, config)


@pytest.mark.slow
def test_plan_of_the_cpu_study_matches_the_committed_study():
    """tune/cpu.yaml planned on this machine against the committed study of the README's main command."""
    config = load_config("tune/cpu.yaml")
    study = json.loads(COMMITTED_STUDY.read_text())
    plan = plan_study(config)
    assert plan["trials"] == study["num_trials"] == config.tune.num_samples
    assert plan["concurrency"] == study["concurrency"]
    assert study["trial_epochs"] <= plan["max_trial_epochs"]
    assert plan["data"]["split_sizes"] == study["data"]["split_sizes"]
    assert plan["data"]["categories"] == study["data"]["categories"]
    assert plan["disk_gb"] == pytest.approx(study["disk"]["estimated_need_gb"], rel=0.01)
    assert plan["papers_per_s_per_worker"] > 0 and plan["wall_hours"] > 0 and plan["gpu_hours"] == 0
