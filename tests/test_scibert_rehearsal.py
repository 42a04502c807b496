"""tune/scibert.yaml itself, end to end on this CPU, with a SciBERT-shaped model served as pickled weights."""
import pytest

import re
from pathlib import Path

import os
import subprocess

from benchmarks.scibert_rehearsal import plan_full_study, rehearse, table, time_steps_at_512
from conftest import SAMPLE_DATA

pytestmark = pytest.mark.slow


def test_scibert_shaped_study_trains_tunes_evaluates_and_predicts(tmp_path, monkeypatch):
    found = rehearse(tmp_path, str(SAMPLE_DATA))
    study = found["study"]
    assert sorted(p.name for p in found["model_dir"].iterdir()) == ["config.json", "pytorch_model.bin", "vocab.txt"]
    assert study["config"]["data"]["max_length"] == 512 and study["num_trials"] == 2
    assert "error" not in study["trials_by_status"]
    assert "model.safetensors" in found["exported_files"] and "pytorch_model.bin" not in found["exported_files"]
    assert {"model.safetensors", "training_state.pt"} <= set(found["checkpoint_files"])
    assert found["checkpoint_bytes"] > 1.2e9  # 110M fp32 weights + two AdamW moments
    assert study["disk"]["estimated_need_gb"] * 1e9 >= 2 * found["checkpoint_bytes"]  # keep + 1 per trial, 2 trials
    assert all(0 < r["peak_rss_gb"] < 20 and r["train_seconds_per_step"] > 0 for r in found["reports"])
    assert set(found["evaluation"].model) | set(found["identical"]) >= {"tuned", "default", "baseline", "ensemble"}
    assert len(found["prediction"].strip().splitlines()) == 3  # top-3 lines with probabilities and names

    # the plan of the same study on the declared 8-GPU cluster (cluster/README.md quotes it for the full collection)
    planned = plan_full_study(found["model_dir"], str(SAMPLE_DATA), tmp_path)
    assert "GPU 8 on 8 node(s)" in planned and re.search(r"\d+\.\d+ GPU-hours", planned), planned


    # ARXIVCLS_REHEARSAL_TABLE=results/benchmarks/scibert_rehearsal.md writes the benchmark's table from this run
    if os.environ.get("ARXIVCLS_REHEARSAL_TABLE"):
        from arxivcls.models import resolve_model

        monkeypatch.setenv("ARXIVCLS_MODEL_CACHE", str(tmp_path / "converted"))
        at_512 = time_steps_at_512(resolve_model(str(found["model_dir"])), batch_size=4)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        Path(os.environ["ARXIVCLS_REHEARSAL_TABLE"]).write_text(table(found, at_512, commit))
