"""The Python API: arxivcls.tune / arxivcls.plan with their results as Python objects, inside the
caller's own Ray runtime or one of their own, and bad input as one UserError with the CLI's message."""
import socket
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import arxivcls
from arxivcls.api import study_config
from arxivcls.cli import main
from arxivcls.config import load_config
from conftest import tiny_study_yaml


def cli_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err.strip()


def one_category_file(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"id": [f"p{i}" for i in range(30)], "title": ["t"] * 30, "summary": ["an abstract"] * 30,
                  "category_code": ["cs.LG"] * 30}).to_csv(path, index=False)
    return path


def test_overrides_as_dotted_keys_or_section_dicts_on_a_path_or_a_config(tmp_path):
    base = load_config("tune/cpu.yaml")
    assert study_config(base) == base  # a Config goes through the same loader, unchanged
    config = study_config(base, tmp_path / "yes.csv", {"tune.num_samples": 2, "train": {"learning_rate": 1e-5},
                                                       "tune.search_space.batch_size": {"type": "choice", "values": [8]}})
    assert (config.data.path, config.tune.num_samples, config.train.learning_rate) == (str(tmp_path / "yes.csv"), 2, 1e-5)
    assert config.tune.search_space["batch_size"] == {"type": "choice", "values": [8]} and "learning_rate" in config.tune.search_space
    assert base.tune.num_samples == 4  # the caller's Config is never changed
    with pytest.raises(arxivcls.UserError, match="give section.key=value"):
        study_config("tune/cpu.yaml", overrides={"num_samples": 2})
    with pytest.raises(arxivcls.UserError, match="expected int"):
        study_config("tune/cpu.yaml", overrides={"train.epochs": "many"})
    with pytest.raises(arxivcls.UserError, match="config must be a YAML file's path or an arxivcls Config"):
        arxivcls.tune(42)


def test_bad_input_raises_one_user_error_with_the_cli_s_message_and_makes_nothing(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "missing.parquet"), "cache_dir": str(tmp_path / "cache")},
                                      "train": {"storage_path": str(tmp_path / "runs")},
                                      "tune": {"results_dir": str(tmp_path / "results"), "models_dir": str(tmp_path / "models")}}))
    with pytest.raises(ValueError, match="unknown config key 'train.learnin_rate'") as bad_key:
        arxivcls.tune(config, **{"train.learnin_rate": 1e-4})
    assert isinstance(bad_key.value, arxivcls.UserError)
    assert cli_error(capsys, "tune", str(config), "--set", "train.learnin_rate=1e-4") == f"error: {bad_key.value}"

    with pytest.raises(arxivcls.UserError, match="data file not found") as missing:
        arxivcls.tune(config)
    assert cli_error(capsys, "tune", str(config)) == f"error: {missing.value}"
    assert not any((tmp_path / name).exists() for name in ("results", "runs", "models"))
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # refused before Ray starts

    one = one_category_file(tmp_path)
    with pytest.raises(arxivcls.UserError, match="a classifier needs at least 2") as one_category:
        arxivcls.plan(config, data=one, **{"model.name": "minilm"})
    assert cli_error(capsys, "plan", str(config), "--data", str(one)) == f"error: {one_category.value}"
    assert cli_error(capsys, "prepare", str(config), "--data", str(one)) == f"error: {one_category.value}"
    with pytest.raises(arxivcls.UserError, match="not both"):
        arxivcls.plan(config, address="auto", gpus=1)


def test_arxivcls_plan_stays_the_function_whatever_imports_the_planning_module_first():
    code = ("import arxivcls.plan, types; from arxivcls.plan import plan_study; import arxivcls; "
            "print(callable(arxivcls.plan) and not isinstance(arxivcls.plan, types.ModuleType))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_a_ray_runtime_whose_train_runs_could_not_free_their_cpus_is_refused():
    from arxivcls.raycluster import cleanup_problem

    assert cleanup_problem("10.0.0.1:6379", None, {"127.0.0.2:6379"}) is None  # its head is another machine
    assert cleanup_problem("h:1", None, {"h:1"}) is None  # the only one here
    assert cleanup_problem("h:1", "h:1", {"h:1", "h:2"}) is None  # the one `ray start` recorded
    for recorded in (None, "h:2"):
        assert "shares the machine with other Ray instances (h:2)" in cleanup_problem("h:1", recorded, {"h:1", "h:2"})


def test_prepare_reads_the_config_s_data_path(tmp_path, papers_file, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": str(papers_file), "cache_dir": str(tmp_path / "cache")}}))
    assert main(["prepare", str(config)]) == 0
    assert "papers" in capsys.readouterr().out and any((tmp_path / "cache").iterdir())


# ---------------------------------------------------------------- whole studies (slow)

def tiny_study(tmp_path, papers_file, tiny_bert, study: str):
    """Trials of one epoch (nothing for the scheduler to stop early) on a few hundred papers."""
    return tiny_study_yaml(tmp_path, papers_file, tiny_bert, data={"max_papers": 300},
                           train={"epochs": 1}, baseline={"num_trials": 4},
                           tune={"study": study, "search_space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-3}}})


@pytest.mark.slow
def test_a_study_in_the_user_s_own_ray_runtime_leaves_it_running(tmp_path, papers_file, tiny_bert, capsys):
    import ray
    from matplotlib.figure import Figure

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the API address named: other Ray instances may run on the test machine (raycluster.train_cleanup_problem)
    ray.init(num_cpus=2, dashboard_port=port, runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}})
    try:
        result = arxivcls.tune(tiny_study(tmp_path, papers_file, tiny_bert, "in-users-ray"), **{"tune.num_samples": 2})
        assert ray.is_initialized() and ray.get(ray.remote(lambda: 41 + 1).remote()) == 42

        trials = result.trials
        assert len(trials) == 2 and trials.is_default.tolist() == [True, False]
        assert {"learning_rate", "status", "val_macro_f1", "epochs_run"} <= set(trials.columns)
        assert trials.epochs_run.tolist() == [1, 1] and trials.val_macro_f1.notna().all()
        assert result.best_config.train.learning_rate == pytest.approx(result.best_params["learning_rate"])

        comparison = result.comparison
        assert {"tuned", "baseline"} <= set(comparison.index)  # "default" too unless it is the tuned trial
        assert ((comparison.accuracy_low <= comparison.accuracy) & (comparison.accuracy <= comparison.accuracy_high)).all()
        assert {"model", "reference", "verdict"} <= set(result.differences.columns)
        assert result.report.is_file() and {"tuned", "default", "baseline"} <= set(result.models)
        assert isinstance(result.figures["confusion_matrix_tuned"], Figure)
        predictions = result.classifier("tuned").predict("Quantum error correction", "Surface codes and qubits", top_k=2)
        assert len(predictions) == 2 and predictions[0].probability >= predictions[1].probability
        assert "best trial" in repr(result) and "accuracy" in repr(result)

        out = capsys.readouterr().out
        assert "ray: the running Ray runtime; dashboard http://" in out and "arxivcls: trial 2/2" in out

        with pytest.raises(arxivcls.UserError, match="a classifier needs at least 2"):  # after Ray was in use
            arxivcls.tune(tiny_study(tmp_path, one_category_file(tmp_path), tiny_bert, "one-category"))
        assert ray.is_initialized()
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_study_without_ray_starts_its_own_and_stops_it_leaving_worker_output_in_ray_s_logs(tmp_path, papers_file,
                                                                                             tiny_bert, capfd):
    import ray

    assert not ray.is_initialized()
    result = arxivcls.tune(tiny_study(tmp_path, papers_file, tiny_bert, "own-ray"), **{"tune.num_samples": 1})
    assert not ray.is_initialized()
    assert result.trials.status.tolist() == ["completed"] and "tuned" in result.comparison.index
    out = capfd.readouterr().out
    assert "ray: started a local cluster" in out and "arxivcls: trial 1/1" in out
    assert "RayTrainWorker" not in out and "epoch 1/1" not in out  # the workers' lines stay in Ray's log files
