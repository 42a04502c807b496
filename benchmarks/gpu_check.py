"""The GPU check: arxivcls's own training step and inference on one GPU, against the original recipe.

On the GPU machine, from the repository root (<= 8 minutes on an H200; 3 files in $OUT):

    python3 -m benchmarks.gpu_check --out "$OUT"

Needs only python, torch (CUDA), transformers, tokenizers, safetensors, numpy, pandas, pyarrow and
the repository: no Ray, no Optuna, no network, no hub. The model has SciBERT's shape (BERT-base,
a 31,090-token WordPiece vocabulary built from data/arxiv_sample.parquet, random weights), saved as
the hub serves SciBERT and loaded through arxivcls.models; every step is arxivcls.steps' own.

In this order, each measurement timed for --seconds after its warm-up (the longest batch first,
so peak memory is reached):
  1. training, original: batches of 8 random papers padded to max_length (512), fp32, eager attention
  2. training, arxivcls: length-grouped batches padded to their longest row, bf16 autocast, SDPA,
     at batch 8/16/32/64
  3. inference: the original evaluation (one paper at a time, tokenized and padded to 512 in the
     loop, fp32, eager) against arxivcls.steps.predict_proba (tokenized once, length-sorted batches)
  4. training, arxivcls under torch.compile at batch 8/16/32/64, when --compile-reserve-s are left
Writes gpu_train.md, gpu_inference.md and gpu_check.json to --out after every measurement. A
measurement that fails is a row with its error; a watchdog ends the run 30 s after --budget-s
(counted from the start, the model's build included), the row it stopped in saying so.
`--device cpu --smoke` runs the same code with a tiny model and a few steps in seconds (its test).
`arxivcls plan CONFIG --gpu-figures gpu_check.json` prices a study from the JSON.
"""
import argparse
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

STARTED = time.perf_counter()  # the budget counts from here: imports and the model's build included
REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "arxiv_sample.parquet"
COMMAND = 'python3 -m benchmarks.gpu_check --out "$OUT"'
BATCH_SIZES = (8, 16, 32, 64)
ORIGINAL_BATCH = 8
MAX_LENGTH = 512  # the original's truncation, and the width each of its batches is padded to
LEARNING_RATE, WEIGHT_DECAY = 5e-5, 0.01
INFERENCE_BATCH_SIZES = (64, 256)
WATCHDOG_GRACE_S = 30.0
# Dense (no sparsity) bf16 tensor-core peaks of the vendors' data sheets, by device name.
BF16_PEAK_TFLOPS = ((r"H200", 989.0), (r"H100.*PCIe", 756.0), (r"H100", 989.0), (r"A100", 312.0),
                    (r"L40S", 362.0), (r"\bL4\b", 121.0))
FILES = {"training": "gpu_train.md", "inference": "gpu_inference.md"}
JSON_FILE = "gpu_check.json"


def bf16_peak_tflops(device_name: str) -> float | None:
    return next((peak for pattern, peak in BF16_PEAK_TFLOPS if re.search(pattern, device_name)), None)


# ---------------------------------------------------------------- output

TRAINING_COLUMNS = {"recipe": "recipe", "batch": "batch_size", "padding": "padding", "precision": "precision",
                    "attention": "attention", "compile": "compile", "timed steps": "steps", "papers/s": "papers_per_s",
                    "tokens/s": "tokens_per_s", "padding share": "padding_share", "peak GPU GB": "peak_memory_gb",
                    "TFLOP/s": "tflops", "of bf16 peak": "peak_share", "x original": "speedup",
                    "warm-up s": "warmup_s", "mean loss": "mean_loss", "status": "status"}
INFERENCE_COLUMNS = {"path": "path", "batch": "batch_size", "precision": "precision", "attention": "attention",
                     "papers": "papers", "papers/s": "papers_per_s", "tokens/s": "tokens_per_s",
                     "peak GPU GB": "peak_memory_gb", "TFLOP/s": "tflops", "of bf16 peak": "peak_share",
                     "x per paper": "speedup", "max abs prob diff": "max_prob_diff", "status": "status"}
NOTES = {
    "training": "A step is arxivcls.steps.forward_backward + optimizer_step (fused AdamW, gradient clipping). "
                "tokens/s counts real tokens; TFLOP/s the model FLOPs of the padded batches computed "
                "(arxivcls.plan.train_flops: per token 6 x matmul parameters + 12 x layers x hidden x width), "
                "against the chip's dense bf16 peak also for fp32 (its matmuls: see versions). "
                "x original: papers/s over the original recipe's. warm-up s includes compiling.",
    "inference": "per paper: the original evaluation, one paper at a time, tokenized and padded to max_length in "
                 "the loop; batched: arxivcls.steps.predict_proba, its tokenizing included. Papers: the first N of "
                 "the sample. max abs prob diff: against the per-paper probabilities of the same papers.",
}


def cell(value, key: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key.endswith("share"):
            return f"{value:.1%}"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


class Check:
    """The header and rows so far, written to --out after each measurement (and by the watchdog)."""

    def __init__(self, out: Path, header: dict):
        self.out, self.header = out, header
        self.rows: dict[str, list[dict]] = {"training": [], "inference": []}
        self.current: tuple[str, dict] | None = None  # (table, row) being measured, for the watchdog
        self.lock = threading.Lock()

    @staticmethod
    def elapsed() -> float:
        return time.perf_counter() - STARTED

    def start(self, table: str, row: dict) -> None:
        self.current = (table, row)

    def record(self, table: str, row: dict) -> None:
        with self.lock:
            self.rows[table].append(row)
            self.current = None
            self.write()

    def figures(self) -> dict:
        eager = [r for r in self.rows["training"] if r["recipe"] == "arxivcls" and not r["compile"] and r["status"] == "ok"]
        return {**self.header, "wall_s": round(self.elapsed(), 1), **self.rows,
                "training_papers_per_s": {str(r["batch_size"]): r["papers_per_s"] for r in eager}}

    def write(self) -> None:
        from arxivcls.files import atomic_write_text

        figures = self.figures()
        atomic_write_text(self.out / JSON_FILE, json.dumps(figures, indent=2) + "\n")
        for table, columns in (("training", TRAINING_COLUMNS), ("inference", INFERENCE_COLUMNS)):
            atomic_write_text(self.out / FILES[table], markdown(figures, table, columns))


def markdown(figures: dict, table: str, columns: dict) -> str:
    device, model, data = figures["device"], figures["model"], figures["data"]
    peak = f"{device['bf16_peak_tflops']:g} dense bf16 TFLOP/s" if device["bf16_peak_tflops"] else "bf16 peak n/a"
    memory = f"{device['memory_gb']:g} GB, " if device["memory_gb"] else ""
    lines = [
        f"# GPU check, {table}: {device['name']}", "",
        f"- command: `{figures['command']}`" + (" (a smoke run: checks the code, measures nothing)" if figures["smoke"] else ""),
        f"- device: {device['name']} ({memory}{peak}); host {device['host']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in figures["versions"].items()),
        f"- model: {model['name']}: {model['layers']} layers, {model['hidden']} hidden, vocabulary {model['vocab_size']:,}, "
        f"{model['parameters'] / 1e6:.1f}M parameters ({model['matmul_parameters'] / 1e6:.1f}M in matmuls), random weights",
        f"- data: {data['path']}, {data['papers']} papers in {data['categories']} categories, max_length "
        f"{data['max_length']}: mean {data['mean_tokens']:.0f} tokens per paper, p95 {data['p95_tokens']:.0f}",
        f"- date: {figures['date']}; wall time {figures['wall_s']:.0f} s of the {figures['budget_s']:g} s budget",
        "", NOTES[table], "",
        "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(key), key) for key in columns.values()) + " |" for row in figures[table]]
    return "\n".join(lines) + "\n"


def start_watchdog(check: Check, after_s: float) -> None:
    """The run ends at its time cap whatever it is doing (a compile that runs long): the row in
    progress says so, the files keep every finished row."""
    def stop() -> None:
        with check.lock:
            if check.current is not None:
                table, row = check.current
                check.rows[table].append({**row, "status": f"stopped: the check reached its {after_s:g} s cap here"})
            check.write()
        print(f"gpu_check: stopped at its {after_s:g} s cap; {check.out} holds the finished measurements", file=sys.stderr)
        os._exit(3)

    timer = threading.Timer(max(after_s - check.elapsed(), 1.0), stop)
    timer.daemon = True
    timer.start()


# ---------------------------------------------------------------- model, device, time

@dataclass
class Bench:
    """What every measurement shares."""
    check: Check
    args: argparse.Namespace
    model_dir: Path
    split: object  # arxivcls.features.TokenizedSplit of every paper, at max_length
    texts: list
    labels: np.ndarray
    id2label: dict
    device: object  # torch.device
    shape: dict  # arxivcls.plan.train_flops' model shape
    amp_dtype: object  # arxivcls.models.autocast_dtype("auto", device)

    @property
    def precision(self) -> str:
        import torch

        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    @property
    def peak(self) -> float | None:
        return self.check.header["device"]["bf16_peak_tflops"]

    def load_model(self, attention: str):
        """A fresh classifier from the saved model (arxivcls.models.load_classifier), on the device."""
        from arxivcls.models import load_classifier

        model = load_classifier(str(self.model_dir), self.id2label)
        if model.config._attn_implementation != attention:
            try:
                model.set_attn_implementation(attention)
            except AttributeError:  # a transformers without it reads the config at each forward
                model.config._attn_implementation = attention
        return model.to(self.device)

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_gb(self) -> float | None:
        import torch

        return round(torch.cuda.max_memory_allocated(self.device) / 1e9, 2) if self.device.type == "cuda" else None

    def measure(self, table: str, row: dict, measurement, need_s: float) -> dict:
        """Run `measurement()` for `row` unless under `need_s` of the budget is left; its figures,
        or its error, become the row."""
        self.check.start(table, row)
        self.reset_memory()
        left = self.args.budget_s - self.check.elapsed()
        if left < need_s:
            row["status"] = f"skipped: {max(left, 0):.0f} s of the budget left, {need_s:.0f} s needed"
        else:
            try:
                row.update(measurement())
                row.setdefault("status", "ok")
                if self.peak and "tflops" in row:
                    row["peak_share"] = round(row["tflops"] / self.peak, 4)
            except Exception as e:  # one failed measurement (out of memory, a compile error) is a row, not the end
                message = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
                row["status"] = f"failed: {type(e).__name__}: {message}"
        self.check.record(table, row)
        return row


# ---------------------------------------------------------------- training

def original_batches(n: int, seed: int = 0):
    """The notebook's sampler: shuffled batches of 8, epoch after epoch."""
    for epoch in range(10**6):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        yield from (order[i:i + ORIGINAL_BATCH] for i in range(0, n, ORIGINAL_BATCH))


def grouped_batches(lengths: np.ndarray, batch_size: int, seed: int = 0):
    """arxivcls's sampler (arxivcls.features.length_grouped_batches), epoch after epoch."""
    from arxivcls.features import length_grouped_batches

    for epoch in range(10**6):
        yield from length_grouped_batches(lengths, batch_size, seed, epoch)


def warmup_batches(lengths: np.ndarray, batch_size: int, count: int) -> list[np.ndarray]:
    """An epoch's longest batch first (peak memory), then its shortest and a middle one (shapes to compile)."""
    from arxivcls.features import length_grouped_batches

    batches = sorted(length_grouped_batches(lengths, batch_size, seed=1, epoch=0), key=lambda b: -lengths[b].max())
    return [batches[0], batches[-1], batches[len(batches) // 2]][:count]


def time_training(bench: Bench, model, batches, make_batch, warmup: list, amp_dtype) -> dict:
    """Warm-up batches, then steps until --seconds or --max-steps; the figures of the timed steps."""
    import torch

    from arxivcls.plan import train_flops
    from arxivcls.steps import class_weights, forward_backward, make_optimizer, optimizer_step

    split, device = bench.split, bench.device
    base = getattr(model, "_orig_mod", model)  # torch.compile's wrapper holds the model
    optimizer = make_optimizer(base, LEARNING_RATE, WEIGHT_DECAY, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights(split.labels, len(bench.id2label)).to(device))
    model.train()

    def step(rows) -> tuple[float, int]:
        batch = make_batch(rows)
        loss = forward_backward(model, batch, loss_fn, amp_dtype, scaler)
        optimizer_step(base, optimizer, None, scaler)
        return loss, batch["input_ids"].shape[1]

    started = time.perf_counter()
    for rows in warmup:
        step(rows)
    bench.sync()
    warmup_s = time.perf_counter() - started
    steps = papers = real = computed = 0
    flops, losses = 0.0, []
    started = time.perf_counter()
    while steps < bench.args.max_steps and (steps == 0 or time.perf_counter() - started < bench.args.seconds):
        rows = next(batches)
        loss, width = step(rows)  # loss.item() inside waits for the backward pass
        losses.append(loss)
        steps, papers = steps + 1, papers + len(rows)
        real += int(split.lengths[rows].sum())
        computed += len(rows) * width
        flops += train_flops(bench.shape, len(rows), width)
    bench.sync()
    seconds = time.perf_counter() - started
    return {"steps": steps, "seconds": round(seconds, 3), "papers_per_s": round(papers / seconds, 2),
            "tokens_per_s": round(real / seconds), "mean_tokens": round(real / papers, 1),
            "padding_share": round(1 - real / computed, 4), "tflops": round(flops / seconds / 1e12, 3),
            "peak_memory_gb": bench.peak_memory_gb(), "warmup_s": round(warmup_s, 2),
            "mean_loss": round(float(np.mean(losses)), 4),
            **({} if np.isfinite(losses).all() else {"status": "ok, but a loss was not finite"})}


def train_original(bench: Bench) -> float | None:
    """The original recipe's row; its papers/s (None if it failed)."""
    from arxivcls.features import collate

    args, split = bench.args, bench.split
    row = {"recipe": "original", "batch_size": ORIGINAL_BATCH, "padding": f"to {args.max_length}", "precision": "fp32",
           "attention": "eager", "compile": False}

    def measurement() -> dict:
        model = bench.load_model("eager")
        pad = lambda rows: {k: v.to(bench.device) for k, v in collate(split, rows, pad_to_multiple=args.max_length).items()}
        figures = time_training(bench, model, original_batches(len(split)), pad,
                                [np.arange(ORIGINAL_BATCH)] * args.warmup_steps, amp_dtype=None)
        return {**figures, "attention": model.config._attn_implementation, "speedup": 1.0}

    row = bench.measure("training", row, measurement, need_s=args.seconds)
    return row["papers_per_s"] if row["status"].startswith("ok") else None


def train_arxivcls(bench: Bench, model, original_rate: float | None, compiled: bool) -> None:
    """arxivcls's recipe at each batch size, eager or compiled (one compiled model for all sizes)."""
    import torch

    from arxivcls.steps import batch_to

    args = bench.args
    runner = torch.compile(model, dynamic=True, backend=args.compile_backend) if compiled else model
    need_s = args.seconds + (args.compile_reserve_s if compiled else 0.0)
    failed = None
    for batch_size in args.compile_batch_sizes if compiled else BATCH_SIZES:
        row = {"recipe": "arxivcls", "batch_size": batch_size, "padding": "length-grouped, per batch",
               "precision": bench.precision, "attention": model.config._attn_implementation,
               "compile": args.compile_backend if compiled else False}
        if failed:
            row["status"] = f"skipped: compiling failed at batch {failed}"
            bench.check.record("training", row)
            continue
        def measurement() -> dict:
            warmup = warmup_batches(bench.split.lengths, batch_size, 3 if compiled else args.warmup_steps)
            figures = time_training(bench, runner, grouped_batches(bench.split.lengths, batch_size),
                                    lambda rows: batch_to(bench.split, rows, bench.device), warmup, bench.amp_dtype)
            return {**figures, "speedup": round(figures["papers_per_s"] / original_rate, 2) if original_rate else None}

        row = bench.measure("training", row, measurement, need_s)
        if compiled and row["status"].startswith("failed"):
            failed = batch_size
        need_s = args.seconds + (args.compile_reserve_s / 4 if compiled else 0.0)  # compiled once, shapes are dynamic


# ---------------------------------------------------------------- inference

def infer_per_paper(bench: Bench, tokenizer, kept: dict) -> dict:
    """The original evaluation: one paper at a time, tokenized and padded to max_length, fp32.
    Its probabilities go to kept["probabilities"]."""
    import torch

    from arxivcls.plan import inference_flops

    args = bench.args
    model = bench.load_model("eager").eval()
    probs, tokens = [], 0
    started = time.perf_counter()
    with torch.no_grad():
        for text in bench.texts[:args.max_loop_papers]:
            inputs = tokenizer(text, truncation=True, max_length=args.max_length, padding="max_length", return_tensors="pt")
            tokens += int(inputs["attention_mask"].sum())
            logits = model(**inputs.to(bench.device)).logits
            probs.append(torch.softmax(logits.float(), dim=-1)[0].cpu().numpy())
            if time.perf_counter() - started > args.seconds:
                break
    seconds = time.perf_counter() - started
    kept["probabilities"] = np.stack(probs)
    return {"papers": len(probs), "seconds": round(seconds, 3), "papers_per_s": round(len(probs) / seconds, 2),
            "tokens_per_s": round(tokens / seconds), "peak_memory_gb": bench.peak_memory_gb(),
            "tflops": round(len(probs) * inference_flops(bench.shape, 1, args.max_length) / seconds / 1e12, 4),
            "speedup": 1.0}


def run_batched(bench: Bench, model, tokenizer, count: int, batch_size: int):
    """arxivcls's evaluation of the first `count` papers: tokenize once, length-sorted batches."""
    from arxivcls.features import TokenizedSplit, tokenize_texts
    from arxivcls.steps import predict_proba

    split = TokenizedSplit.from_lists(tokenize_texts(tokenizer, bench.texts[:count], bench.args.max_length),
                                      bench.labels[:count])
    probs, _ = predict_proba(model, split, np.arange(len(split)), batch_size, bench.device, bench.amp_dtype)
    bench.sync()
    return probs, split


def infer_batched(bench: Bench, model, tokenizer, batch_size: int, loop: dict, loop_probs: np.ndarray) -> dict:
    from arxivcls.features import sorted_batches
    from arxivcls.plan import inference_flops

    probe = min(len(bench.texts), batch_size)  # sizes the timed run to about --seconds
    started = time.perf_counter()
    run_batched(bench, model, tokenizer, probe, batch_size)
    rate = probe / (time.perf_counter() - started)
    count = int(min(len(bench.texts), max(probe, rate * bench.args.seconds)))
    started = time.perf_counter()
    probs, split = run_batched(bench, model, tokenizer, count, batch_size)
    seconds = time.perf_counter() - started
    batches = sorted_batches(split.lengths, batch_size)
    flops = sum(inference_flops(bench.shape, len(rows), int(split.lengths[rows].max())) for rows in batches)
    common = min(len(loop_probs), count)
    return {"papers": count, "seconds": round(seconds, 3), "papers_per_s": round(count / seconds, 2),
            "tokens_per_s": round(int(split.lengths.sum()) / seconds), "peak_memory_gb": bench.peak_memory_gb(),
            "tflops": round(flops / seconds / 1e12, 4), "speedup": round(count / seconds / loop["papers_per_s"], 1),
            "max_prob_diff": round(float(np.abs(probs[:common] - loop_probs[:common]).max()), 4)}


def inference_rows(bench: Bench) -> None:
    from arxivcls.models import load_tokenizer

    tokenizer = load_tokenizer(str(bench.model_dir))
    kept = {}
    loop = bench.measure("inference", {"path": "per paper (original)", "batch_size": 1, "precision": "fp32",
                                       "attention": "eager"}, lambda: infer_per_paper(bench, tokenizer, kept), bench.args.seconds)
    if not loop["status"].startswith("ok"):
        return
    model = None
    for batch_size in INFERENCE_BATCH_SIZES:
        row = {"path": "batched (arxivcls)", "batch_size": batch_size, "precision": bench.precision, "attention": "sdpa"}

        def measurement() -> dict:
            nonlocal model
            model = model or bench.load_model("sdpa")
            return infer_batched(bench, model, tokenizer, batch_size, loop, kept["probabilities"])

        bench.measure("inference", row, measurement, bench.args.seconds)


# ---------------------------------------------------------------- the run

def describe_device(device) -> dict:
    import torch

    host = f"{os.cpu_count()} CPU cores, {platform.machine()}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 1e9
        return {"type": "cuda", "name": name, "memory_gb": round(memory, 1), "bf16_peak_tflops": bf16_peak_tflops(name),
                "host": host}
    return {"type": "cpu", "name": f"CPU ({platform.processor() or platform.machine()})", "memory_gb": None,
            "bf16_peak_tflops": None, "host": host}


def versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none",
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "fp32 matmuls": "TF32 on" if torch.backends.cuda.matmul.allow_tf32 else "TF32 off"}


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory the tables and the JSON go to (created)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="a tiny model, few papers and steps: checks the code in seconds")
    parser.add_argument("--data", default=str(DATA), help="papers the vocabulary, lengths and batches come from")
    parser.add_argument("--papers", type=int, default=5000, help="papers used (the first N after a seeded shuffle)")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per paper at most")
    parser.add_argument("--seconds", type=float, default=12.0, help="timed seconds per measurement after its warm-up")
    parser.add_argument("--max-steps", type=int, default=10**9, help="timed steps per training measurement at most")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before each eager training measurement")
    parser.add_argument("--max-loop-papers", type=int, default=10**9, help="papers of the per-paper loop at most")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help=f"the whole check's time; the watchdog ends the run {WATCHDOG_GRACE_S:g} s after it")
    parser.add_argument("--compile-reserve-s", type=float, default=150.0,
                        help="the compiled measurements start only with this much budget left (compiling takes most)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (the smoke run: eager)")
    args = parser.parse_args(argv)
    args.compile_batch_sizes = BATCH_SIZES
    if args.smoke:
        args.papers, args.seconds, args.max_steps, args.warmup_steps = min(args.papers, 64), 0.5, 2, 1
        args.max_length, args.max_loop_papers, args.compile_reserve_s = min(args.max_length, 128), 8, 0.0
        args.compile_batch_sizes = BATCH_SIZES[:1]
        if "--compile-backend" not in (sys.argv if argv is None else argv):
            args.compile_backend = "eager"  # dynamo's tracing without inductor's code generation: seconds
    return args


def load_papers(path: str, count: int):
    """Texts and label ids of `count` papers of `path`, built as arxivcls.data builds them."""
    from arxivcls.data import normalize, read_table

    papers, _, _ = normalize(read_table(path))
    papers = papers.sample(frac=1.0, random_state=0).head(count).reset_index(drop=True)
    id2label = dict(enumerate(sorted(papers.category.unique())))
    labels = papers.category.map({c: i for i, c in id2label.items()}).to_numpy()
    return papers.text.tolist(), labels, id2label


def build_model(workdir: Path, texts: list[str], smoke: bool) -> Path:
    from arxivcls.models import make_scibert_shaped, make_tiny_bert

    return make_tiny_bert(workdir / "tiny-bert", texts) if smoke else make_scibert_shaped(workdir / "scibert-shaped", texts)


def header(args, bench_device, model, split, id2label: dict) -> dict:
    from arxivcls.plan import matmul_parameters

    data = Path(args.data).resolve()
    return {
        "command": "python3 -m benchmarks.gpu_check" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else ""),
        "smoke": args.smoke, "device": describe_device(bench_device), "versions": versions(),
        "model": {"name": "tiny BERT" if args.smoke else "SciBERT-shaped", "layers": model.config.num_hidden_layers,
                  "hidden": model.config.hidden_size, "vocab_size": model.config.vocab_size,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "matmul_parameters": matmul_parameters((n, p.numel()) for n, p in model.named_parameters())},
        "data": {"path": str(data.relative_to(REPO)) if data.is_relative_to(REPO) else str(data), "papers": len(split),
                 "categories": len(id2label), "max_length": args.max_length, "mean_tokens": round(float(split.lengths.mean()), 1),
                 "p95_tokens": float(np.percentile(split.lengths, 95))},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "budget_s": args.budget_s,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from arxivcls.errors import UserError
    from arxivcls.features import TokenizedSplit, tokenize_texts
    from arxivcls.models import autocast_dtype, load_classifier, load_tokenizer
    from arxivcls.plan import SHAPE_KEYS

    if args.smoke:
        torch.set_num_threads(1)  # a tiny model gains nothing from threads, and loses much on a busy machine
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA GPU (--device cpu --smoke checks the code)", file=sys.stderr)
        return 2
    try:
        texts, labels, id2label = load_papers(args.data, args.papers)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as workdir:
        os.environ["ARXIVCLS_MODEL_CACHE"] = str(Path(workdir) / "converted")  # the .bin's safetensors copy goes here
        model_dir = build_model(Path(workdir), texts, args.smoke)
        split = TokenizedSplit.from_lists(tokenize_texts(load_tokenizer(str(model_dir)), texts, args.max_length), labels)
        check = Check(out, header(args, device, load_classifier(str(model_dir), id2label), split, id2label))
        start_watchdog(check, args.budget_s + WATCHDOG_GRACE_S)
        check.write()
        bench = Bench(check, args, model_dir, split, texts, labels, id2label, device,
                      {k: check.header["model"][k] for k in SHAPE_KEYS}, autocast_dtype("auto", device))
        original_rate = train_original(bench)
        model = bench.load_model("sdpa")
        train_arxivcls(bench, model, original_rate, compiled=False)
        inference_rows(bench)
        train_arxivcls(bench, model, original_rate, compiled=True)
        check.write()
    print(json.dumps({"training_papers_per_s": check.figures()["training_papers_per_s"], "wall_s": round(check.elapsed(), 1),
                      "files": sorted(p.name for p in out.iterdir())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
