"""Shared pieces of the benchmarks: machine header, real-paper samples, a tiny BERT, a private Ray
cluster, an instrumented wrapper around arxivcls's Ray Train worker loop, markdown output."""
import datetime
import json
import os
import platform
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ARXIVCLS_NO_MPS", "1")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "arxiv_papers.parquet"
RESULTS = Path(os.environ.get("ARXIVCLS_BENCH_RESULTS", REPO / "results" / "benchmarks"))  # env: smoke tests elsewhere


# ---------------------------------------------------------------- machine and command

def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def other_studies_running() -> bool:
    """True while another `arxivcls tune` or pytest is running (the CPU is shared)."""
    import subprocess

    for pattern in ("arxivcls tune", "pytest"):
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
        if any(int(pid) != os.getpid() for pid in found):
            return True
    return False


def machine_info() -> dict:
    import ray
    import torch
    import transformers

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU)"
    else:
        device = "cpu"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = _meminfo_gib()
    return {
        "cpu": f"{_cpu_model()}; {os.cpu_count()} logical cores ({affinity} usable), torch threads {torch.get_num_threads()}",
        "memory": f"{mem:.1f} GiB" if mem else "n/a",
        "device": device,
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
                    f"transformers {transformers.__version__}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line(name: str) -> str:
    return f"python -m benchmarks.{name}" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")


class Report:
    """Collects the markdown of one benchmark; `write` adds the header and stores it atomically."""

    def __init__(self, name: str, title: str):
        self.name, self.title = name, title
        self.command = command_line(name)
        self.machine = machine_info()
        self.load_start = loadavg()
        self.busy_start = other_studies_running()
        self.started = time.time()
        self.parts: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text.rstrip() + "\n")

    def header(self) -> str:
        m = self.machine
        lines = [
            f"# {self.title}", "",
            f"- command: `{self.command}`",
            f"- machine: {m['cpu']}; memory {m['memory']}; device {m['device']}",
            f"- versions: {m['versions']}",
            f"- date: {m['date']}; benchmark wall time {time.time() - self.started:.0f} s",
            f"- load average (1/5/15 min) at start {self.load_start}, at end {loadavg()}; "
            f"another study or test run was {'RUNNING' if self.busy_start else 'not running'} at start",
            "", "",
        ]
        return "\n".join(lines)

    def text(self) -> str:
        return self.header() + "\n".join(self.parts)

    def write(self) -> Path:
        from arxivcls.files import atomic_write_text

        path = RESULTS / f"{os.environ.get('ARXIVCLS_BENCH_PREFIX', '')}{self.name}.md"  # gpu_check.sh: gpu_
        text = self.text()
        atomic_write_text(path, text)
        print(text)
        print(f"written: {path}")
        return path


def md_table(rows: list[dict], columns: list[str] | None = None, floatfmt: str = "{:.3g}") -> str:
    if not rows:
        return "(no rows)\n"
    columns = columns or list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return floatfmt.format(value)
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def met(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


# ---------------------------------------------------------------- data and models

def sample_papers(n: int, seed: int = 42, exclude_ids=None, path: Path = DATA):
    """n real papers (seeded sample), text = title + " " + summary, as the original notebook built it."""
    import pandas as pd

    if not Path(path).is_file():
        raise SystemExit(f"error: real data not found at {path}")
    df = pd.read_parquet(path, columns=["id", "title", "summary", "category_code"])
    if exclude_ids is not None:
        df = df[~df.id.isin(set(exclude_ids))]
    df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    return pd.DataFrame({"id": df.id, "text": df.title + " " + df.summary, "category": df.category_code})


def label_ids(categories) -> tuple[list[int], dict]:
    names = sorted(set(categories))
    label2id = {c: i for i, c in enumerate(names)}
    return [label2id[c] for c in categories], {i: c for c, i in label2id.items()}


def write_papers_file(directory: Path, n: int, seed: int = 42, categories: list[str] | None = None) -> Path:
    """A small papers file in the arXiv-digest schema (read by path, outside the repository)."""
    import pandas as pd

    df = pd.read_parquet(DATA, columns=["id", "title", "summary", "category_code", "categories", "source"])
    if categories:
        df = df[df.category_code.isin(categories)]
    df = df.sample(n=min(n, len(df)), random_state=seed).reset_index(drop=True)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"papers_{n}_{seed}.parquet"
    df.to_parquet(path, index=False)
    return path


def make_tiny_bert(directory: Path, texts: list[str], num_labels: int = 2) -> Path:
    """arxivcls.models.make_tiny_bert: a 2-layer, 32-wide random BERT with a vocabulary trained on `texts`."""
    from arxivcls.models import make_tiny_bert as make

    return Path(make(directory, texts, num_labels))


def cpu_sample() -> tuple[float, float]:
    """(CPU seconds used by this process so far, all threads; CPU seconds the whole machine has been
    busy so far, from /proc/stat). Differences over a window say who used the cores during it."""
    busy = 0.0
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        pass
    return time.process_time(), busy


# ---------------------------------------------------------------- a private Ray cluster

@contextmanager
def local_ray(num_cpus: int = 2):
    """A fresh local cluster of our own (address='local': never joins a cluster already running)."""
    import logging

    import ray

    started = time.perf_counter()
    from arxivcls.raycluster import start_local_ray

    start_local_ray(num_cpus, env_vars={"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    info = {"init_seconds": time.perf_counter() - started, "session_dir": session_dir()}
    try:
        yield info
    finally:
        ray.shutdown()


def session_dir() -> str | None:
    try:
        import ray._private.worker as worker

        return worker._global_node.get_session_dir_path()
    except Exception:
        return None


def train_log_events(session: str | None, since_ns: int = 0) -> list[dict]:
    """Ray Train's structured system logs (controller + workers) of this cluster, as (t, component, message)."""
    rows = []
    if not session:
        return rows
    for path in sorted(Path(session, "logs", "train").glob("ray-train-sys-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("timestamp_ns", 0) >= since_ns:
                rows.append({"t": record["timestamp_ns"] / 1e9, "component": record.get("component", ""),
                             "run": record.get("run_name", ""), "message": record.get("message", "")})
    rows.sort(key=lambda r: r["t"])
    return rows


# ---------------------------------------------------------------- instrumented worker loop

def instrument(trainer, record_dir: str):
    """Wrap a TorchTrainer's worker function (arxivcls.train.train_loop_per_worker) with timestamps.

    Inside the worker: every `collate` call (batch shapes, real tokens, cpu_sample()), every training loss, model
    load, prepare_model, each epoch's validation end, local checkpoint writing and `ray.train.report`.
    Rank 0 writes the record to record_dir/<pid>.json when the loop returns. Nothing in the loop changes.
    """
    inner = trainer.train_loop_per_worker
    trainer.train_loop_per_worker = _Instrumented(inner, str(record_dir))
    return trainer


class _Instrumented:
    def __init__(self, inner, record_dir: str):
        self.inner, self.record_dir = inner, record_dir

    def __call__(self, config: dict):
        import ray.train
        import ray.train.torch
        import torch

        import arxivcls.metrics
        import arxivcls.models
        import arxivcls.steps as loop  # the worker loop's batches are collated there

        ev = {"entry": time.time(), "process_group": torch.distributed.is_initialized(), "collate": [], "loss": [],
              "load_model": [], "prepare_model": [], "val_end": [], "report": []}
        saved = {}

        def patch(owner, name, make):
            saved[(owner, name)] = getattr(owner, name)
            setattr(owner, name, make(getattr(owner, name)))

        def timed(key):
            def make(fn):
                def wrapper(*a, **k):
                    t = time.time()
                    out = fn(*a, **k)
                    ev[key].append([t, time.time()])
                    return out
                return wrapper
            return make

        def make_collate(fn):
            def collate(split, rows, *a, **k):
                t = time.time()
                batch = fn(split, rows, *a, **k)
                mask = batch["attention_mask"]
                ev["collate"].append([t, int(mask.sum()), int(mask.shape[0]), int(mask.shape[1]), *cpu_sample()])
                return batch
            return collate

        def make_ce(fn):
            def forward(self, logits, target):
                out = fn(self, logits, target)
                ev["loss"].append(float(out.detach()))
                return out
            return forward

        def make_metrics(fn):
            def metrics(*a, **k):
                out = fn(*a, **k)
                ev["val_end"].append(time.time())
                return out
            return metrics

        patch(loop, "collate", make_collate)
        patch(torch.nn.CrossEntropyLoss, "forward", make_ce)
        patch(arxivcls.models, "load_classifier", timed("load_model"))
        patch(ray.train.torch, "prepare_model", timed("prepare_model"))
        patch(arxivcls.metrics, "classification_metrics", make_metrics)
        patch(ray.train, "report", timed("report"))
        try:
            self.inner(config)
        finally:
            for (owner, name), value in saved.items():
                setattr(owner, name, value)
            ev["exit"] = time.time()
            if ray.train.get_context().get_world_rank() == 0:
                Path(self.record_dir).mkdir(parents=True, exist_ok=True)
                Path(self.record_dir, f"{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(ev))


def reports_to_file(path: Path):
    """A Ray Train callback (it runs in the controller actor) that appends every reported metrics
    dict to a JSON-lines file: all epochs, not only the checkpointed ones that Result lists."""
    from ray.train.v2.api.callback import UserCallback

    class ReportsToFile(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            with open(path, "a") as f:
                f.write(json.dumps(metrics[0]) + "\n")

    return ReportsToFile()


def read_reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def read_records(record_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(record_dir).glob("*.json"))]
