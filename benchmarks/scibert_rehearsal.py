"""A full-size SciBERT study rehearsed on a CPU with no hub: `tune/scibert.yaml` itself, end to end.

A randomly initialised model with SciBERT's exact architecture and vocabulary size (BERT-base,
31,090 WordPiece tokens built from arXiv abstracts) is saved as the hub serves SciBERT: config.json,
vocab.txt and a pickled pytorch_model.bin. `arxivcls tune tune/scibert.yaml` then runs with
overrides that shrink only the amount of work (papers, steps per epoch, trials, epochs, batch)
and fit the resources to this machine (CPU workers); max_length 512, the checkpoint format, the
disk preflight, export, evaluation and predict are the shipped config's. Writes
results/benchmarks/scibert_rehearsal.md.

    python -m benchmarks.scibert_rehearsal [--workdir DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

CONFIG = "tune/scibert.yaml"
VOCAB_PAPERS = 20_000  # abstracts the stand-in WordPiece vocabulary is built from


def work_overrides(model_dir: Path, workdir: Path, papers: int, steps: int, trials: int) -> list[str]:
    """What the rehearsal changes in tune/scibert.yaml: the amount of work, CPU resources, and where files go."""
    return [
        f"model.name={model_dir}",
        f"data.max_papers={papers}", f"train.max_steps_per_epoch={steps}", f"tune.num_samples={trials}",
        "train.epochs=2", "tune.search_space.epochs={type: int, low: 1, high: 2}",
        "train.batch_size=2", "tune.search_space.batch_size={type: choice, values: [2, 4]}",
        "train.gpus_per_worker=0", "train.cpus_per_worker=2",
        f"data.cache_dir={workdir / 'cache'}", f"train.storage_path={workdir / 'runs'}",
        f"tune.results_dir={workdir / 'results'}", f"tune.models_dir={workdir / 'models'}",
    ]


def build_model(workdir: Path, data_path: str) -> Path:
    from arxivcls.models import make_scibert_shaped

    papers = pd.read_parquet(data_path, columns=["title", "summary"])
    papers = papers.sample(min(VOCAB_PAPERS, len(papers)), random_state=0)
    return make_scibert_shaped(workdir / "scibert-shaped", (papers.title + " " + papers.summary).tolist())


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(argv: list[str], env: dict) -> str:
    """An arxivcls command in a fresh process, as a user runs it; its output, or a one-line failure."""
    done = subprocess.run([sys.executable, "-m", "arxivcls.cli", *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"arxivcls {argv[0]} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def rehearse(workdir: Path, data_path: str, papers: int = 200, steps: int = 2, trials: int = 2) -> dict:
    """Build the model, run the study, predict with the tuned model; what a real study would hit."""
    workdir = Path(workdir).resolve()
    model_dir = build_model(workdir, data_path)
    env = {**os.environ, "ARXIVCLS_MODEL_CACHE": str(workdir / "converted"), "HF_HUB_OFFLINE": "1"}
    overrides = work_overrides(model_dir, workdir, papers, steps, trials) + [f"data.path={data_path}"]
    started = time.time()
    run(["tune", CONFIG, *[arg for item in overrides for arg in ("--set", item)]], env)
    study_seconds = time.time() - started
    study = json.loads((workdir / "results" / "scibert" / "study.json").read_text())
    tuned = workdir / "models" / "scibert" / "tuned"
    prediction = run(["predict", "--model", str(tuned), "--title", "Attention is all you need",
                      "--abstract", "We propose the Transformer, a model architecture based on attention."], env)
    reports = [json.loads(p.read_text()) for p in (workdir / "runs" / "scibert").glob("train-*/last_report.json")]
    checkpoints = sorted((workdir / "runs" / "scibert").glob("train-*/checkpoint_*"))
    return {
        "model_dir": model_dir, "converted_bytes": directory_bytes(workdir / "converted"),
        "study": study, "study_seconds": study_seconds, "reports": reports, "prediction": prediction,
        "checkpoint_bytes": directory_bytes(checkpoints[0]) if checkpoints else None,
        "checkpoint_files": sorted(p.name for p in checkpoints[0].iterdir()) if checkpoints else [],
        "exported_bytes": directory_bytes(tuned), "exported_files": sorted(p.name for p in tuned.iterdir()),
        "bin_bytes": (model_dir / "pytorch_model.bin").stat().st_size,
        "evaluation": pd.read_csv(workdir / "results" / "scibert" / "comparison.csv"),
        "identical": json.loads((workdir / "results" / "scibert" / "evaluation.json").read_text())["identical"],
    }


PLANNED_CLUSTER = ["--gpus", "8", "--cpus", "64", "--nodes", "8"]


def plan_full_study(model_dir: Path, data_path: str, workdir: Path) -> str:
    """`arxivcls plan tune/scibert.yaml` for an 8-GPU cluster, this model standing in for SciBERT."""
    env = {**os.environ, "ARXIVCLS_MODEL_CACHE": str(Path(workdir).resolve() / "converted"), "HF_HUB_OFFLINE": "1"}
    return run(["plan", CONFIG, "--data", data_path, *PLANNED_CLUSTER, "--set", f"model.name={model_dir}"], env)


def time_steps_at_512(model_dir: str, batch_size: int, steps: int = 2) -> dict:
    """Seconds per training step of the converted model, every paper a full 512 tokens, in this process."""
    import dataclasses

    from arxivcls.config import load_config
    from arxivcls.plan import measure_cpu_papers_per_s
    from arxivcls.train import peak_rss_bytes

    train = dataclasses.replace(load_config(CONFIG).train, batch_size=batch_size, cpus_per_worker=os.cpu_count())
    papers_per_s = measure_cpu_papers_per_s(model_dir, train, num_labels=20, tokens=512, steps=steps)
    return {"batch_size": batch_size, "seconds_per_step": batch_size / papers_per_s, "peak_rss_gb": peak_rss_bytes() / 1e9}


def table(found: dict, at_512: dict, commit: str) -> str:
    from arxivcls.models import cpu_has_native_bf16

    study, reports = found["study"], found["reports"]
    peak_rss = max(r["peak_rss_gb"] for r in reports)
    step_seconds = [r["train_seconds_per_step"] for r in reports]
    rows = [
        ("pickled weights as served (`pytorch_model.bin`)", f"{found['bin_bytes'] / 1e9:.2f} GB"),
        ("converted once (arxivcls's cache, `<sha256 of the .bin>/`)", f"`model.safetensors` {found['converted_bytes'] / 1e9:.2f} GB + config + vocab"),
        ("checkpoint on disk (weights + AdamW state + tokenizer)", f"{found['checkpoint_bytes'] / 1e9:.2f} GB: " + ", ".join(found["checkpoint_files"])),
        ("exported model", f"{found['exported_bytes'] / 1e9:.2f} GB: " + ", ".join(found["exported_files"])),
        ("disk budget of the preflight", f"{study['disk']['estimated_need_gb']:.2f} GB for {study['num_trials']} trials "
                                         f"(study directory at the end: {study['disk']['study_bytes'] / 1e9:.2f} GB)"),
        ("peak RSS of a Train worker", f"{peak_rss:.2f} GB"),
        ("training step in the study (batch 2-4, real lengths <= 512)", f"{min(step_seconds):.1f}-{max(step_seconds):.1f} s"),
        (f"training step at 512 tokens, batch {at_512['batch_size']}, in one process",
         f"{at_512['seconds_per_step']:.1f} s ({at_512['seconds_per_step'] / at_512['batch_size']:.1f} s per paper)"),
        ("the whole `arxivcls tune` (2 trials + evaluation)", f"{found['study_seconds'] / 60:.1f} min; trials: "
                                                            + ", ".join(f"{k} {v}" for k, v in study["trials_by_status"].items())),
    ]
    lines = [
        "# SciBERT rehearsal: tune/scibert.yaml on a CPU, no hub",
        "",
        f"`python -m benchmarks.scibert_rehearsal` (or its slow test with `ARXIVCLS_REHEARSAL_TABLE` set) on commit {commit}, "
        f"{os.cpu_count()} CPU cores {'with native bf16' if cpu_has_native_bf16() else 'without native bf16 (fp32)'}, no GPU. "
        "A random model with "
        "SciBERT's architecture and vocabulary size (BERT-base: 12 layers, 768 hidden, 12 heads, 3072 intermediate, "
        "512 positions, 31,090 tokens; 110M parameters), saved as the hub serves SciBERT, runs `tune/scibert.yaml` "
        "with only the amount of work shrunk and CPU workers:",
        "",
        "`" + " ".join(f"--set {o}" for o in work_overrides(Path("MODEL"), Path("WORK"), 200, 2, 2)[:10]) + "`",
        "",
        "| what | measured |", "|---|---|",
        *[f"| {what} | {value} |" for what, value in rows],
        "",
        "Test metrics of the random model are chance-level and not a result; the rehearsal measures the machinery.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/scibert-rehearsal", help="where the model, runs and results go")
    parser.add_argument("--data", default="../shared/data/arxiv_papers.parquet")
    parser.add_argument("--out", default="results/benchmarks/scibert_rehearsal.md")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    workdir = Path(args.workdir)
    if workdir.exists():
        sys.exit(f"error: {workdir} exists: remove it or pass --workdir")
    found = rehearse(workdir, args.data)
    os.environ["ARXIVCLS_MODEL_CACHE"] = str(workdir.resolve() / "converted")
    from arxivcls.models import resolve_model

    at_512 = time_steps_at_512(resolve_model(str(found["model_dir"])), batch_size=4)
    Path(args.out).write_text(table(found, at_512, commit))
    print(Path(args.out).read_text())
    print("arxivcls plan tune/scibert.yaml " + " ".join(PLANNED_CLUSTER) + " (cluster/README.md quotes this):")
    print(plan_full_study(found["model_dir"], args.data, workdir))


if __name__ == "__main__":
    main()
