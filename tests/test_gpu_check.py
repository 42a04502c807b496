"""benchmarks.gpu_check on the CPU (--smoke) where Ray and Optuna cannot be imported, as on the GPU
machine it is written for; and a plan priced from the figures it writes."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arxivcls.cli import main

REPO = Path(__file__).resolve().parents[1]
# What the GPU machine lacks, made missing here: import fails, importlib.util.find_spec says None.
BLOCKER = 'import sys\nsys.modules.update({"ray": None, "optuna": None})\n'


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check")
    (work / "blocker").mkdir()
    (work / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "blocker"), str(REPO)]), "HF_HUB_OFFLINE": "1"}
    for module in ("ray", "optuna"):
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, probe.stderr  # the blocker holds
    out = work / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


def test_smoke_run_writes_its_tables_and_figures_without_ray_or_optuna(smoke_run):
    assert sorted(p.name for p in smoke_run.iterdir()) == ["gpu_check.json", "gpu_inference.md", "gpu_train.md"]
    figures = json.loads((smoke_run / "gpu_check.json").read_text())
    assert figures["smoke"] and figures["device"]["type"] == "cpu" and figures["model"]["layers"] == 2
    training = figures["training"]
    assert [(r["recipe"], r["batch_size"], r["compile"]) for r in training] == [
        ("original", 8, False), *[("arxivcls", b, False) for b in (8, 16, 32, 64)], ("arxivcls", 8, "eager")]
    assert all(r["status"] == "ok" and r["steps"] == 2 and r["papers_per_s"] > 0 and r["tflops"] > 0 for r in training)
    original, grouped = training[0], training[1:5]
    assert original["padding"] == "to 128" and original["attention"] == "eager" and original["precision"] == "fp32"
    assert all(r["attention"] == "sdpa" for r in grouped)
    assert original["padding_share"] == pytest.approx(1 - original["mean_tokens"] / 128, abs=1e-3)  # every batch at 128
    assert figures["training_papers_per_s"] == {str(r["batch_size"]): r["papers_per_s"] for r in grouped}

    inference = figures["inference"]
    assert [(r["path"], r["batch_size"]) for r in inference] == [
        ("per paper (original)", 1), ("batched (arxivcls)", 64), ("batched (arxivcls)", 256)]
    assert all(r["status"] == "ok" and r["papers_per_s"] > 0 for r in inference)
    assert all(r["max_prob_diff"] < 0.05 for r in inference[1:])  # the batched path computes the same probabilities

    for name, rows in (("gpu_train.md", training), ("gpu_inference.md", inference)):
        text = (smoke_run / name).read_text()
        assert f"- command: `python3 -m benchmarks.gpu_check --device cpu --smoke --out {smoke_run}`" in text
        assert "- versions: python " in text and "torch " in text and "transformers " in text
        table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| recipe")
                 and not line.startswith("| path")]
        assert len(table) == len(rows)


def test_the_command_for_the_gpu_machine_is_written_where_it_is_run_from():
    from benchmarks.gpu_check import COMMAND, __doc__ as doc

    assert COMMAND == 'python3 -m benchmarks.gpu_check --out "$OUT"'
    assert COMMAND in "\n".join(doc.splitlines()[:6])
    assert COMMAND in (REPO / "results" / "benchmarks" / "README.md").read_text()


def test_known_chips_have_their_bf16_peak():
    from benchmarks.gpu_check import bf16_peak_tflops

    assert bf16_peak_tflops("NVIDIA H200") == bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0 and bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("NVIDIA L4") == 121.0 and bf16_peak_tflops("NVIDIA L40S") == 362.0
    assert bf16_peak_tflops("NVIDIA L40") is None and bf16_peak_tflops("Tesla V100-SXM2-16GB") is None


def test_a_plan_is_priced_from_the_figures(smoke_run, tiny_bert, tmp_path, capsys):
    from arxivcls.config import load_config
    from arxivcls.plan import declared_resources, plan_study

    figures = json.loads((smoke_run / "gpu_check.json").read_text())
    argv = ["tune/scibert.yaml", "--data", "data/arxiv_sample.parquet", "--gpus", "1", "--cpus", "8",
            "--set", f"model.name={tiny_bert}", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main(["plan", *argv, "--gpu-figures", str(smoke_run / "gpu_check.json")]) == 0
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("throughput: "))
    batch32 = figures["training_papers_per_s"]["32"]  # tune/scibert.yaml trains at batch 32
    assert re.search(rf"measured on CPU .* by benchmarks\.gpu_check \(a smoke run: not a GPU figure\): arxivcls's step "
                     rf"at batch 32, {batch32:.1f} papers/s", line), line

    config = load_config("tune/scibert.yaml", ["data.path=data/arxiv_sample.parquet", f"model.name={tiny_bert}",
                                                f"data.cache_dir={tmp_path / 'cache'}"])
    plan = plan_study(config, declared_resources(8, 1, 1, config.train), gpu_figures=str(smoke_run / "gpu_check.json"))
    assert f"throughput: {plan['papers_per_s_per_worker']:.1f} training papers/s per worker" in line
    assert plan["gpu_hours"] > 0 and plan["wall_hours"] > 0
