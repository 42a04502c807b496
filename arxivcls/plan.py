"""`arxivcls plan CONFIG`: what a study would do and cost, computed before any training.

Data after filtering, tokens per paper (a sample), trials, concurrency on the resources it would
get, the most trial-epochs its early-stopping rule can spend, checkpoint disk, and wall time and
GPU-hours from a training throughput: measured here for CPU workers, for GPU workers either given
(--papers-per-s) or derived from FLOPs (the assumption is printed with the figure).
"""
import dataclasses
import math
import os
import time

import numpy as np

from arxivcls.config import Config, TrainConfig
from arxivcls.errors import UserError

TOKEN_SAMPLE = 2000  # training papers tokenized to measure tokens per paper
# GPU throughput when none is given: an A100's dense bf16 peak at a utilisation that fine-tuning
# BERT-base with dynamic padding typically reaches; replace it with a measured figure
# (benchmarks/gpu_check.sh writes one) for a real budget.
ASSUMED_GPU_TFLOPS, ASSUMED_GPU_UTILISATION = 312.0, 0.4
TRIAL_FIXED_SECONDS = 10.0  # worker start-up and shutdown per trial (results/benchmarks/overhead.md)
INFERENCE_SPEEDUP = 3.0  # a forward pass costs about a third of forward + backward


@dataclasses.dataclass
class Resources:
    cpus: float
    gpus: float
    nodes: int
    source: str  # declared | ray | this machine


def declared_resources(cpus: float | None, gpus: float | None, nodes: int, train: TrainConfig) -> Resources:
    """A cluster described on the command line; a worker must fit on one of its nodes."""
    if nodes < 1 or (cpus is not None and cpus <= 0) or (gpus is not None and gpus < 0):
        raise UserError("--nodes must be >= 1, --cpus > 0 and --gpus >= 0")
    cpus = float(cpus if cpus is not None else os.cpu_count() * nodes)
    gpus = float(gpus or 0)
    per_node = {"CPU": cpus / nodes, "GPU": gpus / nodes}
    for resource, need in (("CPU", train.cpus_per_worker), ("GPU", train.gpus_per_worker)):
        if need > per_node[resource] + 1e-9:
            raise UserError(f"a worker needs {resource}={need:g} but each of the {nodes} node(s) has {per_node[resource]:g}: "
                            f"lower train.{resource.lower()}s_per_worker or declare bigger nodes")
    return Resources(cpus, gpus, nodes, "declared")


def observed_resources(address: str | None) -> Resources:
    """The Ray cluster's free resources when one is joined, else this machine's."""
    import ray

    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        from arxivcls.raycluster import connect_ray

        connect_ray(address, log=lambda *_: None)
        free = ray.available_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        return Resources(free.get("CPU", 0.0), free.get("GPU", 0.0), nodes, "ray")
    import torch

    return Resources(float(os.cpu_count()), float(torch.cuda.device_count()), 1, "this machine")


def max_trial_epochs(num_trials: int, max_epochs: int, grace_period: int, reduction_factor: int) -> dict:
    """The most trial-epochs each rule can spend. ASHA lets a trial go on when it is in the top
    1/reduction_factor of the results seen at its rung so far, so when every trial beats the ones
    before it, all run to the end. Synchronous halving compares all trials at each rung and keeps
    ceil(n / reduction_factor)."""
    from arxivcls.halving import rung_epochs

    alive, spent, reached = num_trials, 0, 0
    for rung in rung_epochs(grace_period, reduction_factor, max_epochs):
        spent += alive * (rung - reached)
        alive, reached = math.ceil(alive / reduction_factor), rung
    spent += alive * (max_epochs - reached)
    return {"asha": num_trials * max_epochs, "sync": spent, "no early stopping": num_trials * max_epochs}


def tokens_per_paper(prepared, tokenizer, max_length: int, seed: int) -> dict:
    from arxivcls.features import tokenize_texts

    texts = prepared.load_split("train").text
    sample = texts.sample(min(TOKEN_SAMPLE, len(texts)), random_state=seed).tolist()
    untruncated = np.array([len(ids) for ids in tokenize_texts(tokenizer, sample, 100_000)])
    lengths = np.minimum(untruncated, max_length)
    return {"sample": len(sample), "mean": float(lengths.mean()), "p50": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "truncated_fraction": float((untruncated > max_length).mean())}


def parameter_count(model_dir: str) -> int:
    from pathlib import Path

    from safetensors import safe_open

    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def measure_cpu_papers_per_s(model_dir: str, train: TrainConfig, num_labels: int, tokens: int, steps: int = 3) -> float:
    """Training papers/s of one CPU worker: timed forward + backward + AdamW steps at the mean length."""
    import torch

    from arxivcls.models import autocast_dtype, load_classifier
    from arxivcls.train import make_optimizer

    torch.set_num_threads(max(1, train.cpus_per_worker))
    device = torch.device("cpu")
    model = load_classifier(model_dir, {i: str(i) for i in range(num_labels)}).train()
    optimizer = make_optimizer(model, train, device)
    amp_dtype = autocast_dtype(train.precision, device)
    generator = torch.Generator().manual_seed(train.seed)
    input_ids = torch.randint(1000, model.config.vocab_size, (train.batch_size, tokens), generator=generator)
    labels = torch.randint(0, num_labels, (train.batch_size,), generator=generator)
    seconds = []
    for _ in range(steps + 1):  # the first step warms up allocator and kernels
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    return train.batch_size / float(np.median(seconds[1:]))


def plan_study(config: Config, resources: Resources | None = None, address: str | None = None,
               papers_per_s: float | None = None) -> dict:
    from arxivcls.data import prepare
    from arxivcls.models import load_tokenizer
    from arxivcls.inputs import preflight
    from arxivcls.tuning import checkpoint_bytes, plan_concurrency, trial_resources

    model_dir = preflight(config)
    train, tune = config.train, config.tune
    resources = resources or observed_resources(address)
    available = {"CPU": resources.cpus, "GPU": resources.gpus}
    plan_concurrency(available, train, tune.num_samples)  # refuses a trial that cannot fit
    concurrency = plan_concurrency(available, train, tune.num_samples, tune.max_concurrent)

    prepared = prepare(config.data, log=lambda *_: None)
    tokens = tokens_per_paper(prepared, load_tokenizer(model_dir), config.data.max_length, config.data.seed)
    sizes = prepared.meta["split_sizes"]
    max_epochs = max(train.epochs, int(tune.search_space.get("epochs", {}).get("high", train.epochs)))
    budget = max_trial_epochs(tune.num_samples, max_epochs, tune.grace_period, tune.reduction_factor)
    checkpoint = checkpoint_bytes(model_dir)

    params = parameter_count(model_dir)
    if papers_per_s:
        throughput, source = papers_per_s, "given"
    elif train.gpus_per_worker > 0:
        flops_per_paper = 6 * params * tokens["mean"]
        throughput = ASSUMED_GPU_TFLOPS * 1e12 * ASSUMED_GPU_UTILISATION * min(1.0, train.gpus_per_worker) / flops_per_paper
        source = (f"derived from FLOPs: 6 x {params / 1e6:.0f}M parameters x {tokens['mean']:.0f} tokens per paper "
                  f"on a {ASSUMED_GPU_TFLOPS:g}-TFLOPS bf16 GPU (A100) at {ASSUMED_GPU_UTILISATION:.0%} utilisation")
    else:
        throughput = measure_cpu_papers_per_s(model_dir, train, prepared.num_labels, round(tokens["mean"]))
        source = f"measured here: {train.batch_size} papers x {tokens['mean']:.0f} tokens a step, {train.cpus_per_worker} threads"
    worker_papers_per_s = throughput * train.num_workers
    papers_per_epoch = sizes["train"]
    if train.max_steps_per_epoch:
        papers_per_epoch = min(papers_per_epoch, train.max_steps_per_epoch * train.batch_size * train.num_workers)
    epoch_seconds = (papers_per_epoch + sizes["val"] / INFERENCE_SPEEDUP) / worker_papers_per_s
    trial_epochs = budget[tune.scheduler]
    waves = math.ceil(tune.num_samples / concurrency)
    wall = trial_epochs * epoch_seconds / concurrency + waves * TRIAL_FIXED_SECONDS
    gpus_per_trial = trial_resources(train).get("GPU", 0.0)
    return {
        "model_dir": model_dir, "parameters": params,
        "data": {"papers": sum(sizes.values()), "categories": prepared.num_labels, "split_sizes": sizes,
                 "dropped_categories": len(prepared.meta["dropped_categories"])},
        "tokens_per_paper": tokens, "max_length": config.data.max_length,
        "resources": dataclasses.asdict(resources), "trial_resources": trial_resources(train),
        "trials": tune.num_samples, "concurrency": concurrency, "scheduler": tune.scheduler,
        "max_epochs": max_epochs, "max_trial_epochs": budget,
        "checkpoint_gb": checkpoint / 1e9,
        "disk_gb": tune.num_samples * (train.checkpoint_keep + 1) * checkpoint / 1e9,
        "papers_per_s_per_worker": throughput, "throughput_source": source,
        "epoch_seconds": epoch_seconds, "wall_hours": wall / 3600,
        "gpu_hours": trial_epochs * epoch_seconds * gpus_per_trial / 3600,
    }


def format_plan(plan: dict, config: Config) -> str:
    d, t, budget = plan["data"], plan["tokens_per_paper"], plan["max_trial_epochs"]
    r = plan["resources"]
    sizes = ", ".join(f"{k} {v}" for k, v in d["split_sizes"].items())
    lines = [
        f"study '{config.tune.study}': model {config.model.name} ({plan['parameters'] / 1e6:.1f}M parameters)",
        f"data: {d['papers']} papers in {d['categories']} categories after filtering "
        f"({d['dropped_categories']} categories dropped); split {sizes}",
        f"tokens per paper (max_length {plan['max_length']}, {t['sample']} training papers): mean {t['mean']:.0f}, "
        f"median {t['p50']:.0f}, p95 {t['p95']:.0f}; {t['truncated_fraction']:.1%} truncated",
        f"resources ({r['source']}): CPU {r['cpus']:g}, GPU {r['gpus']:g} on {r['nodes']} node(s); one trial holds "
        + ", ".join(f"{k}={v:g}" for k, v in plan["trial_resources"].items()),
        f"trials: {plan['trials']}, {plan['concurrency']} at a time",
        f"trial-epochs at most ({plan['max_epochs']} epochs per trial): {config.tune.scheduler} {budget[config.tune.scheduler]} "
        f"(asha {budget['asha']}, sync {budget['sync']}, "
        f"grace {config.tune.grace_period}, reduction factor {config.tune.reduction_factor})",
        f"checkpoint disk: {plan['checkpoint_gb']:.2f} GB per checkpoint (weights + AdamW moments); "
        f"the preflight budgets {plan['disk_gb']:.1f} GB",
        f"throughput: {plan['papers_per_s_per_worker']:.1f} training papers/s per worker ({plan['throughput_source']})",
        f"estimate at that budget: {plan['epoch_seconds'] / 60:.1f} min per trial-epoch, "
        f"{plan['wall_hours']:.2f} h wall, {plan['gpu_hours']:.1f} GPU-hours",
    ]
    return "\n".join(lines)
