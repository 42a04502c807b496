"""Per-trial fixed cost of arxivcls's Ray Train trials, tokenize-once savings, and how study time grows.

1. Tokenizing per trial vs once per study: arxivcls.features.tokenize_texts (MiniLM tokenizer,
   max_length 512) on the training split vs reading the tokenize-once cache (tokenize_split, hit).
2. One trial's fixed cost, broken down: direct Ray Train runs (arxivcls.train.build_trainer().fit(),
   tiny BERT) with timestamps from the driver, Ray Train's own structured logs (controller, worker
   group, process group) and an instrumented wrapper around the unchanged worker loop (model load,
   prepare_model, epochs, checkpoint writing, ray.train.report). Fixed cost = fit() wall time minus
   the epochs' own seconds (training + validation). The first run on the fresh cluster is shown apart.
3. Whole studies (arxivcls.tuning.run_study, evaluate=False, tiny BERT, every trial the same fixed
   work: `--epochs` epochs, ASHA grace period = budget so nothing stops early, only the learning rate
   searched): study wall time vs number of trials and vs data size. Per trial, the fixed cost from
   Tune's timestamps = time_total_s - sum of epoch_seconds.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import (Report, instrument, local_ray, make_tiny_bert, md_table, met, read_records, read_reports,
                               reports_to_file, session_dir, train_log_events, write_papers_file)
from benchmarks.hpo_efficiency import chdir

NAME = "overhead"
TARGET_FIXED_S = 10.0


# ---------------------------------------------------------------- 1. tokenization

def tokenization_rows(papers: dict, workdir: Path, max_length: int) -> list[dict]:
    from arxivcls.config import DataConfig
    from arxivcls.data import prepare
    from arxivcls.features import tokenize_split, tokenize_texts
    from arxivcls.models import load_tokenizer, minilm_path

    tokenizer = load_tokenizer(minilm_path())
    rows = []
    for n, path in papers.items():
        prepared = prepare(DataConfig(path=str(path), cache_dir=str(workdir / "cache-tok")), log=lambda *a: None)
        texts = prepared.load_split("train").text.tolist()
        started = time.perf_counter()
        tokenize_texts(tokenizer, texts, max_length)
        tokenize = time.perf_counter() - started
        started = time.perf_counter()
        tokenize_split(prepared, "train", tokenizer, max_length, str(workdir / "cache-tok"), log=lambda *a: None)
        miss = time.perf_counter() - started
        started = time.perf_counter()
        tokenize_split(prepared, "train", tokenizer, max_length, str(workdir / "cache-tok"), log=lambda *a: None)
        hit = time.perf_counter() - started
        rows.append({"papers in file": n, "train papers": len(texts), "tokenize_texts s (per trial, if not cached)": tokenize,
                     "first tokenize_split s (tokenize + write cache)": miss, "cache read s (per study)": hit,
                     "saved per extra trial s": tokenize - hit, "ratio": tokenize / hit})
    return rows


# ---------------------------------------------------------------- 2. one trial, broken down

PATTERNS = {
    "placement group": r"Placement group ready in ([\d.]+)s",
    "worker actors created": r"worker actors created in ([\d.]+)s",
    "before_init_train_context callbacks": r"before_init_train_context callbacks completed in ([\d.]+)s",
    "train context initialised on workers": r"Train context initialized on workers in ([\d.]+)s",
    "after_worker_group_start callbacks (process group, ...)": r"after_worker_group_start callbacks completed in ([\d.]+)s",
    "train function launched": r"Train function launched on workers in ([\d.]+)s",
    "worker group startup total": r"Worker group startup completed in ([\d.]+)s total",
}


def log_breakdown(events: list[dict], run: str) -> dict:
    mine = [e for e in events if e["run"] == run]
    out = {}
    for key, pattern in PATTERNS.items():
        for e in mine:
            match = re.search(pattern, e["message"])
            if match:
                out[key] = float(match.group(1))
                break
    controller = [e for e in mine if e["component"] == "controller"]
    out["controller first log"] = controller[0]["t"] if controller else None
    attempt = [e for e in mine if "Attempting to start training worker group" in e["message"]]
    out["worker group start requested"] = attempt[0]["t"] if attempt else None
    pg = [e for e in mine if "Setting up process group" in e["message"]]
    after_pg = [e for e in mine if pg and e["t"] > pg[0]["t"] and e["component"] == "worker"]
    out["process group setup"] = (after_pg[0]["t"] - pg[0]["t"]) if pg and after_pg else None
    shut = [e for e in mine if "Shutting down" in e["message"]]
    done = [e for e in mine if "Worker group shutdown successful" in e["message"]]
    out["worker group shutdown"] = (done[0]["t"] - shut[0]["t"]) if shut and done else None
    return out


def direct_run(inputs, train, name: str, workdir: Path) -> dict:
    import dataclasses

    from arxivcls.train import build_trainer

    record_dir = workdir / "records" / name
    reports_file = workdir / "records" / f"{name}.jsonl"  # every epoch: Result lists only checkpointed ones
    reports_file.parent.mkdir(parents=True, exist_ok=True)
    trainer = instrument(build_trainer(dataclasses.replace(inputs.trial, train=train), name=name, callbacks=[reports_to_file(reports_file)]),
                         str(record_dir))
    t0 = time.time()
    result = trainer.fit()
    t1 = time.time()
    if result.error:
        raise RuntimeError(f"{name} failed: {result.error}")
    rec = read_records(record_dir)[0]
    logs = log_breakdown(train_log_events(session_dir(), int((t0 - 1) * 1e9)), name)
    history = pd.DataFrame(read_reports(reports_file))
    epochs = float(history.epoch_seconds.sum())
    first_collate = rec["collate"][0][0]
    val_end, reports = rec["val_end"], rec["report"]
    checkpoint_write = sum(r[0] - v for v, r in zip(val_end, reports))  # save_pretrained + tokenizer + optimizer state
    report_s = sum(r[1] - r[0] for r in reports)  # ray.train.report: persist the checkpoint to storage
    load = rec["load_model"][0]
    prepare = rec["prepare_model"][0]
    row = {
        "run": name, "fit() wall s": t1 - t0, "epochs (train+val) s": epochs, "fixed s": t1 - t0 - epochs,
        "driver -> controller actor up": (logs["controller first log"] - t0) if logs["controller first log"] else None,
        "controller setup -> worker group requested": (logs["worker group start requested"] - logs["controller first log"])
        if logs["worker group start requested"] and logs["controller first log"] else None,
        **{k: logs.get(k) for k in PATTERNS},
        "process group setup": logs["process group setup"],
        "loop start -> model load (ray.get data, imports)": load[0] - rec["entry"],
        "model load": load[1] - load[0],
        "prepare_model": prepare[1] - prepare[0],
        "prepare_model -> first batch (optimizer, ...)": first_collate - prepare[1],
        "checkpoint write (local)": checkpoint_write,
        "ray.train.report (persist checkpoint)": report_s,
        "loop exit -> fit() returns (shutdown)": t1 - rec["exit"],
        "worker group shutdown": logs["worker group shutdown"],
        "process group initialised before loop": rec["process_group"],
        "epochs": int(history.epoch.max()),
    }
    return row


def import_times() -> list[dict]:
    """Seconds a fresh Python process spends importing what a Ray Train worker imports."""
    rows = []
    for label, code in [("python (empty)", "pass"), ("import ray", "import ray"), ("import torch", "import torch"),
                        ("import ray.train.torch", "import ray.train.torch"),
                        ("import transformers BertForSequenceClassification",
                         "from transformers import BertForSequenceClassification"),
                        ("import arxivcls.train + load_classifier deps",
                         "import arxivcls.train, arxivcls.metrics; from transformers import AutoModelForSequenceClassification")]:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        rows.append({"fresh process": label, "seconds (best of 2)": min(times)})
    return rows


# ---------------------------------------------------------------- 3. whole studies

def run_one_study(papers: Path, tiny: Path, workdir: Path, trials: int, args, tag: str) -> dict:
    from arxivcls.config import Config, DataConfig, ModelConfig, TrainConfig, TuneConfig, validate
    from arxivcls.tuning import run_study

    config = Config(
        data=DataConfig(path=str(papers), max_length=args.max_length, cache_dir=str(workdir / "cache")),
        model=ModelConfig(name=str(tiny)),
        train=TrainConfig(learning_rate=2e-3, batch_size=32, epochs=args.epochs, warmup_ratio=0.05, eval_batch_size=256,
                          cpus_per_worker=1, storage_path=str(workdir / "runs"), max_failures=0, patience=args.epochs),
        tune=TuneConfig(study=tag, num_samples=trials, search_space={"learning_rate": {"type": "loguniform", "low": 1e-3, "high": 5e-3}},
                        grace_period=args.epochs, reduction_factor=2, results_dir=str(workdir / "results"), max_failures=0),
    )
    validate(config)
    t0 = time.time()
    with chdir(workdir):
        run_study(config, evaluate=False, log=lambda *a: print(*a, flush=True))
    wall = time.time() - t0
    results = workdir / "results" / tag
    study = json.loads((results / "study.json").read_text())
    table = pd.read_csv(results / "trials.csv")
    history = pd.read_csv(results / "history.csv")
    epoch_sum = history.groupby("trial_id").epoch_seconds.sum()
    fixed = table.set_index("trial_id").seconds - epoch_sum
    events = train_log_events(session_dir(), int((t0 - 1) * 1e9))
    startups = [log_breakdown(events, f"train-{t}").get("worker group startup total") for t in table.trial_id]
    startups = [s for s in startups if s is not None]
    return {
        "trials": trials, "train papers": study["data"]["split_sizes"]["train"], "concurrency": study["concurrency"],
        "study wall s": wall, "trial-epochs": study["trial_epochs"],
        "mean trial s (time_total_s)": float(table.seconds.mean()), "mean epochs s / trial": float(epoch_sum.mean()),
        "mean fixed s / trial": float(fixed.mean()), "max fixed s": float(fixed.max()),
        "mean worker group startup s": float(np.mean(startups)) if startups else None,
        "wall s per trial": wall / trials,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", default="1,4,16", help="study sizes (trials) at --base-size papers")
    parser.add_argument("--sizes", default="1000,4000,16000", help="data sizes (papers) at --base-trials trials")
    parser.add_argument("--base-size", type=int, default=1000)
    parser.add_argument("--base-trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--direct-runs", type=int, default=3, help="measured direct Ray Train runs (after one cold run)")
    parser.add_argument("--max-length", type=int, default=128, help="for the tiny-BERT trials")
    parser.add_argument("--tokenize-max-length", type=int, default=512)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args(argv)


    from arxivcls.config import Config, DataConfig, ModelConfig, TrainConfig
    from arxivcls.inputs import prepare_inputs

    report = Report(NAME, "Per-trial fixed cost, tokenize-once, and study-time growth")
    trial_counts = [int(x) for x in args.trials.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        workdir = Path(tmp)
        papers = {n: write_papers_file(workdir / "data", n, seed=0) for n in sorted(set(sizes) | {args.base_size})}
        texts = pd.read_parquet(papers[max(papers)], columns=["title", "summary"]).head(3000)
        tiny = make_tiny_bert(workdir / "tiny_bert", (texts.title + " " + texts.summary).tolist())

        print("--- imports", flush=True)
        imports = import_times()
        print("--- tokenization", flush=True)
        tokenization = tokenization_rows({n: papers[n] for n in sizes}, workdir, args.tokenize_max_length)
        print(tokenization, flush=True)

        with local_ray(num_cpus=args.cpus) as cluster:
            config = Config(data=DataConfig(path=str(papers[args.base_size]), max_length=args.max_length,
                                            cache_dir=str(workdir / "cache")),
                            model=ModelConfig(name=str(tiny)),
                            train=TrainConfig(learning_rate=2e-3, batch_size=32, epochs=args.epochs, warmup_ratio=0.05,
                                              eval_batch_size=256, cpus_per_worker=1, storage_path=str(workdir / "runs"),
                                              max_failures=0, patience=args.epochs))
            inputs = prepare_inputs(config, log=lambda *a: None)
            direct = []
            for i in range(args.direct_runs + 1):
                print(f"--- direct run {i}", flush=True)
                row = direct_run(inputs, config.train, f"direct-{i}", workdir)
                row["run"] = "cold (first on cluster)" if i == 0 else f"warm {i}"
                direct.append(row)
                print(row, flush=True)

            studies = []
            plan = [(t, args.base_size) for t in trial_counts] + [(args.base_trials, n) for n in sizes
                                                                    if (args.base_trials, n) not in [(t, args.base_size) for t in trial_counts]]
            for trials, size in plan:
                print(f"--- study: {trials} trials, {size} papers", flush=True)
                row = run_one_study(papers[size], tiny, workdir, trials, args, tag=f"overhead-{trials}t-{size}p")
                row["papers in file"] = size
                studies.append(row)
                print(row, flush=True)
            ray_init = cluster["init_seconds"]

    warm = [r for r in direct if r["run"] != "cold (first on cluster)"]
    mean_fixed = float(np.mean([r["fixed s"] for r in warm]))
    one_at_a_time = [s for s in studies if s["concurrency"] == 1]
    several_at_a_time = [s for s in studies if s["concurrency"] > 1]
    study_fixed = float(np.mean([s["mean fixed s / trial"] for s in one_at_a_time])) if one_at_a_time else float("nan")
    report.add(f"Tiny random BERT (2 layers, width 32), max_length {args.max_length}, batch 32, {args.epochs} epochs per "
               f"trial, 1 CPU per trial (2 trials at a time in studies). Real papers: seeded samples of "
               f"{', '.join(str(n) for n in sorted(papers))} papers (80/10/10 split). Own local Ray cluster "
               f"({args.cpus} CPUs, started in {ray_init:.1f} s, not counted below).\n")

    report.add("## Target\n")
    report.add(md_table([
        {"target": f"fixed cost per trial <= {TARGET_FIXED_S:.0f} s (CPU)",
         "measured": f"{mean_fixed:.1f} s per direct Ray Train run (warm, mean of {len(warm)}); "
                     f"{study_fixed:.1f} s per trial inside studies running one trial at a time (time_total_s - epochs)",
         "status": met(mean_fixed <= TARGET_FIXED_S and study_fixed <= TARGET_FIXED_S)},
    ], ["target", "measured", "status"]))
    if several_at_a_time:
        together = float(np.mean([s["mean fixed s / trial"] for s in several_at_a_time]))
        concurrency = float(np.mean([s["concurrency"] for s in several_at_a_time]))
        report.add(f"In studies running {concurrency:g} trials at a time, they start on the same {args.cpus} cores and each "
                   f"trial's fixed seconds stretch to {together:.1f} s (section 3), {together / concurrency:.1f} s of study "
                   f"time per trial.\n")

    report.add("## 1. Tokenizing per trial vs once per study (MiniLM tokenizer, max_length "
               f"{args.tokenize_max_length}, training split)\n")
    report.add(md_table(tokenization))

    report.add("## 2. Where one trial's fixed seconds go (direct Ray Train runs, seconds)\n")
    keys = [k for k in direct[0] if k not in ("run",)]
    transposed = [{"step": k, **{r["run"]: r[k] for r in direct}} for k in keys]
    report.add(md_table(transposed, ["step"] + [r["run"] for r in direct], floatfmt="{:.2f}"))
    report.add("Rows from `placement group` to `worker group startup total` are Ray Train's own log lines "
               "(`[Worker Group Initialization] ...`); `driver -> controller actor up` is fit() to the controller's "
               "first log line; the loop rows come from the instrumented worker function; `fixed s` = fit() wall "
               "time - epochs (train+val) s.\n")
    report.add("Fresh-process import times (what every new Ray Train worker process pays before the loop starts):\n")
    report.add(md_table(imports, floatfmt="{:.2f}"))

    report.add("## 3. Study wall time vs trials and data size\n")
    report.add(md_table(studies, ["trials", "papers in file", "train papers", "concurrency", "study wall s", "trial-epochs",
                                  "mean trial s (time_total_s)", "mean epochs s / trial", "mean fixed s / trial",
                                  "max fixed s", "mean worker group startup s", "wall s per trial"], floatfmt="{:.3g}"))
    by_trials = [s for s in studies if s["papers in file"] == args.base_size]
    if len(by_trials) >= 2:
        x = np.array([s["trials"] for s in by_trials], dtype=float)
        y = np.array([s["study wall s"] for s in by_trials])
        slope, intercept = np.polyfit(x, y, 1)
        at_a_time = max(s["concurrency"] for s in by_trials)
        report.add(f"Least squares over the {args.base_size}-paper studies: study wall s = {intercept:.1f} + "
                   f"{slope:.1f} x trials (at most {at_a_time} trial(s) at a time, so each trial occupies a slot "
                   f"for ~{at_a_time * slope:.1f} s).\n")
    report.write()


if __name__ == "__main__":
    main()
