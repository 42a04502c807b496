"""Saved models on a whole labelled file: rate and peak memory of `arxivcls evaluate --data`.

Runs the command in a subprocess on FILE (or its first --limit rows) and samples the memory of its
whole process tree every --interval seconds: the driver, Ray's GCS, raylet and dashboard, the read
task and the inference actors. RSS summed over processes counts a page they share (Ray's object
store, shared libraries) once per process, so it is an upper bound; PSS splits each shared page
among its processes and sums to the memory the tree holds. Each run adds a row to
results/benchmarks/evaluate_file.md (earlier rows with another command are kept).
"""
import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA, REPO, RESULTS, Report, md_table

NAME = "evaluate_file"
COLUMNS = ["rows", "papers", "command s", "scoring s", "papers/s", "inference papers/s", "peak RSS GB", "peak PSS GB",
           "max_length", "batch", "actors", "commit", "command"]


def tree_memory(root) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `root` and every process under it."""
    import psutil

    rss = pss = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
    return rss, pss


def run_sampled(command: list[str], interval: float) -> dict:
    """Run `command`, sampling its process tree's memory until it exits."""
    import psutil

    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO)
    root, peak_rss, peak_pss = psutil.Process(child.pid), 0, 0
    while child.poll() is None:
        try:
            rss, pss = tree_memory(root)
        except psutil.NoSuchProcess:
            break
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(interval)
    return {"returncode": child.wait(), "seconds": time.perf_counter() - started, "peak_rss": peak_rss, "peak_pss": peak_pss}


def commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout
    return f"{head}{' (uncommitted changes)' if dirty.strip() else ''}"


def earlier_rows(path: Path, command: str) -> list[dict]:
    """The table rows of earlier runs with another command."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == len(COLUMNS) and cells[0] not in {"rows", "---"} and cells[-1] != f"`{command}`":
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


def result_row(evaluation: dict, run: dict, command: str) -> dict:
    scoring, models = evaluation["scoring"], evaluation["models"]
    return {"rows": evaluation["rows_read"], "papers": evaluation["papers"], "command s": f"{run['seconds']:.0f}",
            "scoring s": f"{scoring['wall_seconds']:.0f}", "papers/s": f"{scoring['papers_per_s']:.1f}",
            "inference papers/s": f"{scoring['inference_papers_per_s']:.1f}",
            "peak RSS GB": f"{run['peak_rss'] / 1e9:.2f}", "peak PSS GB": f"{run['peak_pss'] / 1e9:.2f}",
            "max_length": ", ".join(f"{n} {m['max_length']}" for n, m in models.items() if m["max_length"]) or "n/a",
            "batch": scoring["batch_size"], "actors": scoring["actors"], "commit": commit(), "command": f"`{command}`"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="the labelled papers file")
    parser.add_argument("--model", action="append", metavar="NAME=DIR", help="default: tuned=models/cpu/tuned")
    parser.add_argument("--baseline", metavar="TRAIN_FILE")
    parser.add_argument("--limit", type=int, help="score only the file's first N rows")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--actors", type=int)
    parser.add_argument("--out", help="the command's output directory (default: a temporary one, deleted)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    args = parser.parse_args(argv)

    report = Report(NAME, "`arxivcls evaluate --data`: rate and peak memory on a labelled file")
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-file-") as tmp:
        out = args.out or str(Path(tmp) / "out")
        cli = ["evaluate", "--data", args.data, *[a for m in args.model or ["tuned=models/cpu/tuned"] for a in ("--model", m)],
               "--out", out]
        for flag, value in (("--baseline", args.baseline), ("--limit", args.limit), ("--batch-size", args.batch_size),
                            ("--actors", args.actors)):
            cli += [flag, str(value)] if value is not None else []
        run = run_sampled([sys.executable, "-m", "arxivcls.cli", *cli], args.interval)
        if run["returncode"] != 0:
            raise SystemExit(f"error: the command failed (exit {run['returncode']})")
        evaluation = json.loads((Path(out) / "evaluation.json").read_text())
    command = "arxivcls " + shlex.join([c if c != out else "DIR" for c in cli])
    path = RESULTS / f"{NAME}.md"
    rows = earlier_rows(path, command) + [result_row(evaluation, run, command)]
    report.add("Each row: one run of the command. `command s` includes Ray's start, model loading, any baseline fit, "
               "the bootstrap and the report; `scoring s` is the streaming pass (read, inference, results back); "
               "`inference papers/s` is the rate while the actors compute, by their own timers (no actor start, model load "
               "or wait): the steady rate of a long file. Peak RSS sums the process "
               "tree's resident memory (shared pages counted once per process: an upper bound); peak PSS shares them "
               f"out. Memory sampled every {args.interval:g} s.\n")
    report.add(md_table(rows, COLUMNS))
    report.add("## This run\n")
    report.add("```json\n" + json.dumps({k: evaluation[k] for k in ("scoring", "models", "dropped")}, indent=1) + "\n```\n")
    report.write()


if __name__ == "__main__":
    main()
