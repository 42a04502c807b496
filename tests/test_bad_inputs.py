"""Bad input matrix through the real CLI: one line `error: ...`, exit 2, no traceback, nothing partial.

A few inputs are not errors but are handled and reported (a one-paper class, blank rows, conflicting
duplicates, a 1 MB abstract); those assert the handling instead.
"""
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import reliability


def cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "arxivcls.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_clean_error(result, message):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def papers(n_per_class=6, classes=("cs.LG", "cs.CV")):
    rows = [{"id": f"{c}-{i}", "title": f"title {c} {i}", "summary": f"abstract about {c} number {i}", "category_code": c}
            for c in classes for i in range(n_per_class)]
    return pd.DataFrame(rows)


PREPARE_CASES = {
    "missing file": (lambda d: d / "nope.parquet", "data file not found"),
    "corrupt Parquet": (lambda d: (d / "x.parquet").write_bytes(b"PAR1 garbage" * 10) and d / "x.parquet", "cannot read"),
    "CSV with wrong delimiter": (lambda d: (d / "x.csv").write_text(papers().to_csv(index=False, sep=";")) and d / "x.csv", "no known schema"),
    "CSV without header": (lambda d: (d / "x.csv").write_text(papers().to_csv(index=False, header=False)) and d / "x.csv", "no known schema"),
    "no schema's columns": (lambda d: (d / "x.jsonl").write_text('{"doi": 1, "text": "a", "label": "b"}\n') and d / "x.jsonl", "kaggle needs"),
    "empty file": (lambda d: (d / "x.csv").write_text("") or d / "x.csv", "data file is empty"),
    "every class below the minimum": (lambda d: (d / "x.csv").write_text(papers(2).to_csv(index=False)) and d / "x.csv", "every category has fewer than"),
    "non-UTF-8 bytes in a CSV": (lambda d: (d / "x.csv").write_bytes(papers().to_csv(index=False).encode() + b"9,caf\xe9,x,cs.LG\n") and d / "x.csv", "not valid UTF-8"),
    "every title and abstract empty": (lambda d: (d / "x.csv").write_text(papers().assign(title="", summary="").to_csv(index=False)) and d / "x.csv", "no usable papers"),
}


@pytest.mark.parametrize("case", list(PREPARE_CASES))
def test_prepare_refuses_bad_data(case, tmp_path):
    make, message = PREPARE_CASES[case]
    data = make(tmp_path)
    result = cli("prepare", "--data", str(data), "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    line = assert_clean_error(result, message)
    prepared = tmp_path / "cache" / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())  # nothing half-written
    reliability.record("bad input", f"prepare: {case}", f"exit 2, `{line[:110]}`")


def test_handled_inputs_are_reported_not_fatal(tmp_path):
    frame = papers(8)
    odd = pd.DataFrame([
        {"id": "one", "title": "lonely", "summary": "the only paper of its class", "category_code": "q-bio.SC"},
        {"id": "blank", "title": None, "summary": None, "category_code": "cs.LG"},
        {"id": "cs.LG-0", "title": "dup", "summary": "same id, other label", "category_code": "cs.CV"},
        {"id": "huge", "title": "long", "summary": "word " * 200_000, "category_code": "cs.CV"},
    ])
    path = tmp_path / "odd.csv"
    pd.concat([frame, odd]).to_csv(path, index=False)
    result = cli("prepare", "--data", str(path), "--min-per-class", "1", "--cache-dir", str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "no_text 1" in result.stdout and "conflicting_duplicate_ids 1" in result.stdout
    assert "q-bio.SC" in result.stdout  # the one-paper class is kept, in train
    reliability.record("bad input", "prepare: a class with one paper", "kept in train only (val/test need >= 3 papers); no crash")
    reliability.record("bad input", "prepare: NaN / empty title and abstract", "row dropped and counted (`no_text`); title-only rows kept")
    reliability.record("bad input", "prepare: duplicate ids with different labels", "every copy of the id dropped and counted (`conflicting_duplicate_ids`)")
    reliability.record("bad input", "prepare: 1 MB abstract", "text clipped to 50k characters before tokenization (truncation is at max_length anyway)")


def write_config(tmp_path, papers_file, **sections):
    config = {"data": {"path": str(papers_file), "cache_dir": str(tmp_path / "cache")},
              "train": {"storage_path": str(tmp_path / "runs")},
              "tune": {"results_dir": str(tmp_path / "results"), "models_dir": str(tmp_path / "models")}}
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


TUNE_CASES = {
    "unknown config key": ({"train": {"learnin_rate": 1e-4}}, [], "unknown config key 'train.learnin_rate'"),
    "negative learning rate": ({}, ["--set", "train.learning_rate=-0.001"], "learning_rate must be positive"),
    "empty search space": ({"tune": {"search_space": {}}}, [], "search_space is empty"),
    "num_samples 0": ({}, ["--set", "tune.num_samples=0"], "num_samples must be >= 1"),
    "unknown model name": ({"model": {"name": "no-such-org/no-such-model"}}, [], "not in the local Hugging Face cache"),
    "model directory that does not exist": ({"model": {"name": "./models/nothing-here"}}, [], "model directory not found"),
    "--resume with no study": ({}, ["--resume"], "no study to resume"),
    "unknown scheduler": ({"tune": {"scheduler": "hyperband"}}, [], "tune.scheduler must be 'asha'"),
    "results directory not writable": ({"tune": {"results_dir": "/proc/arxivcls-results"}}, [], "is not writable"),
    "data file missing": ({}, ["--data", "missing.parquet"], "data file not found"),
    "storage with less free space than the study needs": ({"tune": {"min_free_disk_gb": 1e9}}, [], "GB free but the study may need"),
}


@pytest.mark.parametrize("case", list(TUNE_CASES))
def test_tune_refuses_bad_config(case, tmp_path, papers_file):
    sections, extra, message = TUNE_CASES[case]
    config = write_config(tmp_path, papers_file, **sections)
    result = cli("tune", str(config), *extra, cwd=tmp_path)
    line = assert_clean_error(result, message)
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()  # nothing half-made
    reliability.record("bad input", f"tune: {case}", f"exit 2 before Ray starts, `{line[:110]}`")


def test_evaluate_and_predict_refuse_bad_paths(tmp_path):
    line = assert_clean_error(cli("evaluate", str(tmp_path), cwd=tmp_path), "holds no study.json")
    reliability.record("bad input", "evaluate: a directory with no study", f"exit 2, `{line}`")
    line = assert_clean_error(cli("predict", "--model", str(tmp_path), "--title", "x", cwd=tmp_path), "not a saved model directory")
    reliability.record("bad input", "predict: a model directory without a model", f"exit 2, `{line}`")
