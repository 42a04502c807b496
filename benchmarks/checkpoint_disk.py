"""Peak checkpoint disk of a study: `arxivcls tune CONFIG` runs as the user runs it, while the
checkpoint directories of its Train runs are measured every 0.2 s; the table sets the peak beside
what the disk preflight budgets (study.json's disk.estimated_need_gb).

    .venv/bin/python -m benchmarks.checkpoint_disk tune/cpu.yaml [--set k=v ...]

Writes results/benchmarks/checkpoint_disk.md. The study's own results land where the config says.
"""
import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import Report, md_table

NAME = "checkpoint_disk"


def checkpoint_bytes(experiment: Path) -> tuple[int, int, dict]:
    """(bytes, directories, directories per run) of every checkpoint_* directory under the study's Train runs."""
    total, count, per_run = 0, 0, {}
    for run in experiment.glob("train-*"):
        for checkpoint in run.glob("checkpoint_2*"):
            try:
                if checkpoint.is_dir():
                    total += sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
                    count += 1
                    per_run[run.name] = per_run.get(run.name, 0) + 1
            except OSError:  # deleted by Ray while measured
                pass
    return total, count, per_run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from arxivcls.config import load_config

    config = load_config(args.config, args.overrides)
    experiment = Path(config.train.storage_path).resolve() / config.tune.study
    report = Report(NAME, "Peak checkpoint disk of a study")
    peak = {"bytes": 0, "directories": 0, "per_run": 0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            total, count, per_run = checkpoint_bytes(experiment)
            peak["bytes"], peak["directories"] = max(peak["bytes"], total), max(peak["directories"], count)
            peak["per_run"] = max([peak["per_run"], *per_run.values()])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    command = [sys.executable, "-m", "arxivcls.cli", "tune", args.config, *sum((["--set", o] for o in args.overrides), [])]
    started = time.time()
    finished = subprocess.run(command)
    done.set()
    watcher.join()
    if finished.returncode != 0:
        sys.exit(f"error: the study exited {finished.returncode}")
    results = Path(config.tune.results_dir) / config.tune.study
    study = json.loads((results / "study.json").read_text())
    end_bytes, end_count, _ = checkpoint_bytes(experiment)
    keep = config.train.checkpoint_keep
    report.add(f"`arxivcls tune {' '.join(command[4:])}`: {study['num_trials']} trials, {study['concurrency']} at a time, "
               f"{study['trial_epochs']} trial-epochs, train.checkpoint_keep {keep}; study wall time "
               f"{time.time() - started:.0f} s. Checkpoint directories of `{experiment.name}/train-*` measured every 0.2 s.\n")
    report.add(md_table([
        {"": "peak during the study", "GB": peak["bytes"] / 1e9, "checkpoints": peak["directories"],
         "most of one trial": peak["per_run"]},
        {"": "after the study", "GB": end_bytes / 1e9, "checkpoints": end_count, "most of one trial": ""},
        {"": "disk preflight budget (num_samples x (keep + 1) + concurrency bound)", "GB": study["disk"]["estimated_need_gb"],
         "checkpoints": "", "most of one trial": f"{keep + 2} (keep + latest + one being written)"},
    ], floatfmt="{:.3f}"))
    report.write()


if __name__ == "__main__":
    main()
