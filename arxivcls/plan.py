"""`arxivcls plan CONFIG`: what a study would do and cost, computed before any training.

Data after filtering, tokens per paper (a sample), trials, concurrency on the resources it would
get, the most trial-epochs its early-stopping rule can spend, checkpoint disk, and wall time and
GPU-hours from a training throughput: measured here for CPU workers, for GPU workers measured by
benchmarks.gpu_check (--gpu-figures), given (--papers-per-s) or derived from FLOPs (the assumption
is printed with the figure). A searched max_length is priced at each value it can take.
"""
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from arxivcls.config import Config, TrainConfig
from arxivcls.errors import UserError

TOKEN_SAMPLE = 2000  # training papers tokenized to measure tokens per paper
# GPU throughput when none is measured or given: an A100's dense bf16 peak at a utilisation that
# fine-tuning BERT-base with dynamic padding typically reaches; benchmarks.gpu_check measures one.
ASSUMED_GPU_TFLOPS, ASSUMED_GPU_UTILISATION = 312.0, 0.4
TRIAL_FIXED_SECONDS = 10.0  # worker start-up and shutdown per trial (results/benchmarks/overhead.md)
INFERENCE_SPEEDUP = 3.0  # a forward pass costs about a third of forward + backward
SHAPE_KEYS = ("matmul_parameters", "layers", "hidden")  # what train_flops needs of a model


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


def max_trial_epochs(num_trials: int, max_epochs: int) -> int:
    """The most trial-epochs ASHA can spend. It lets a trial go on when it is in the top
    1/reduction_factor of the results seen at its rung so far, so when every trial beats the ones
    before it, all run to the end."""
    return num_trials * max_epochs


def halving_trial_epochs(num_trials: int, max_epochs: int, grace_period: int, reduction_factor: int) -> int:
    """Trial-epochs when each of ASHA's rungs (grace, grace x rf, ... below max_epochs) keeps
    ceil(n / reduction_factor) of all trials: about what ASHA spends once its rungs have filled."""
    alive, spent, reached, rung = num_trials, 0, 0, grace_period
    while rung < max_epochs:
        spent += alive * (rung - reached)
        alive, reached, rung = math.ceil(alive / reduction_factor), rung, rung * reduction_factor
    return spent + alive * (max_epochs - reached)


def sample_token_lengths(prepared, tokenizer, seed: int) -> np.ndarray:
    """Untruncated token counts of up to TOKEN_SAMPLE training papers."""
    from arxivcls.features import tokenize_texts

    texts = prepared.load_split("train").text
    sample = texts.sample(min(TOKEN_SAMPLE, len(texts)), random_state=seed).tolist()
    return np.array([len(ids) for ids in tokenize_texts(tokenizer, sample, 100_000)])


def length_stats(untruncated: np.ndarray, max_length: int) -> dict:
    lengths = np.minimum(untruncated, max_length)
    return {"sample": len(untruncated), "mean": float(lengths.mean()), "p50": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "truncated_fraction": float((untruncated > max_length).mean())}


def tokens_per_paper(prepared, tokenizer, max_length: int, seed: int) -> dict:
    return length_stats(sample_token_lengths(prepared, tokenizer, seed), max_length)


def searched_max_lengths(search_space: dict) -> list[int]:
    """The max_length values a search space allows that the plan prices: a choice's every value,
    a range's low, middle and high; [] when max_length is not searched."""
    spec = search_space.get("max_length")
    if not spec:
        return []
    if spec["type"] == "choice":
        return sorted({int(v) for v in spec["values"]})
    low, high = int(spec["low"]), int(spec["high"])
    return sorted({low, round((low + high) / 2), high})


def parameter_count(model_dir: str) -> int:
    return model_shape(model_dir)["parameters"]


def matmul_parameters(named_counts) -> int:
    """The parameters FLOPs are counted for: all but the embeddings (a lookup, not a matmul)."""
    return sum(count for name, count in named_counts if "embeddings" not in name)


def model_shape(model_dir: str) -> dict:
    """Parameters (all, and those in matmuls), layers and hidden width of a saved model, read
    from its safetensors headers and config without loading the weights."""
    from safetensors import safe_open
    from transformers import AutoConfig

    counts = []
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as weights:
            counts += [(name, math.prod(weights.get_slice(name).get_shape())) for name in weights.keys()]
    config = AutoConfig.from_pretrained(model_dir)
    return {"parameters": sum(n for _, n in counts), "matmul_parameters": matmul_parameters(counts),
            "layers": int(getattr(config, "num_hidden_layers", 0) or 0), "hidden": int(getattr(config, "hidden_size", 0) or 0)}


def train_flops(shape: dict, batch: int, width: float) -> float:
    """Model FLOPs of one training step on `batch` rows `width` tokens wide: per token 6 per matmul
    parameter (forward 2, backward 4) and 12 x layers x hidden x width for attention's scores and
    weighted sums (the part that grows with the length)."""
    return batch * width * (6 * shape["matmul_parameters"] + 12 * shape["layers"] * shape["hidden"] * width)


def inference_flops(shape: dict, batch: int, width: float) -> float:
    return train_flops(shape, batch, width) / 3  # the forward pass alone


def measure_cpu_papers_per_s(model_dir: str, train: TrainConfig, num_labels: int, tokens: int, steps: int = 3) -> float:
    """Training papers/s of one CPU worker: arxivcls.steps' own steps timed at the mean length."""
    import torch

    from arxivcls.models import autocast_dtype, load_classifier
    from arxivcls.steps import forward_backward, make_optimizer, optimizer_step

    torch.set_num_threads(max(1, train.cpus_per_worker))
    device = torch.device("cpu")
    model = load_classifier(model_dir, {i: str(i) for i in range(num_labels)}).train()
    optimizer = make_optimizer(model, train.learning_rate, train.weight_decay, device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    amp_dtype = autocast_dtype(train.precision, device)
    generator = torch.Generator().manual_seed(train.seed)
    input_ids = torch.randint(1000, model.config.vocab_size, (train.batch_size, tokens), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
             "labels": torch.randint(0, num_labels, (train.batch_size,), generator=generator)}
    seconds = []
    for _ in range(steps + 1):  # the first step warms up allocator and kernels
        started = time.perf_counter()
        forward_backward(model, batch, torch.nn.functional.cross_entropy, amp_dtype, scaler)
        optimizer_step(model, optimizer, None, scaler)
        seconds.append(time.perf_counter() - started)
    return train.batch_size / float(np.median(seconds[1:]))


def load_gpu_figures(source) -> dict:
    """benchmarks.gpu_check's JSON (a path, or the figures themselves), refused with one line
    unless it holds a measured arxivcls training row."""
    figures = source
    if not isinstance(source, dict):
        try:
            figures = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise UserError(f"--gpu-figures: file not found: {source}")
        except (OSError, ValueError) as e:
            raise UserError(f"--gpu-figures: cannot read {source} as JSON ({str(e).splitlines()[0][:120]})")
    if not usable_figures(figures):
        raise UserError(f"--gpu-figures: {source if not isinstance(source, dict) else 'the figures'} hold no measured "
                        "arxivcls training row (the JSON benchmarks.gpu_check writes)")
    return figures


def usable_figures(figures) -> bool:
    try:
        return (bool(measured_training_rows(figures)) and all(figures["model"][k] > 0 for k in SHAPE_KEYS)
                and bool(figures["device"]["name"]))
    except (KeyError, TypeError, AttributeError):
        return False


def measured_training_rows(figures: dict) -> list[dict]:
    """arxivcls's training step as a study runs it (not compiled), measured without error."""
    return [r for r in figures["training"] if r.get("recipe") == "arxivcls" and not r.get("compile")
            and str(r.get("status", "")).startswith("ok") and r.get("papers_per_s", 0) > 0 and r.get("mean_tokens", 0) > 0]


def measured_gpu_throughput(figures: dict, train: TrainConfig, shape: dict, mean_tokens: float) -> tuple[float, str]:
    """Training papers/s of one worker from a gpu_check measurement: the row at the batch size
    nearest train.batch_size, its useful FLOP rate carried over to this model and these lengths."""
    row = min(measured_training_rows(figures),
              key=lambda r: (abs(math.log(r["batch_size"] / train.batch_size)), -r["batch_size"]))
    measured_shape = {k: figures["model"][k] for k in SHAPE_KEYS}
    flops_per_s = row["papers_per_s"] * train_flops(measured_shape, 1, row["mean_tokens"])
    throughput = flops_per_s * min(1.0, train.gpus_per_worker) / train_flops(shape, 1, mean_tokens)
    smoke = " (a smoke run: not a GPU figure)" if figures.get("smoke") else ""
    source = (f"measured on {figures['device']['name']} by benchmarks.gpu_check{smoke}: arxivcls's step at batch "
              f"{row['batch_size']}, {row['papers_per_s']:.1f} papers/s at {row['mean_tokens']:.0f} tokens per paper, "
              f"carried to {mean_tokens:.0f} tokens by FLOPs")
    return throughput, source


def plan_study(config: Config, resources: Resources | None = None, address: str | None = None,
               papers_per_s: float | None = None, gpu_figures=None) -> dict:
    """The plan of `config`'s study. gpu_figures: benchmarks.gpu_check's JSON (path or dict);
    papers_per_s: a given training papers/s of one worker; at most one of the two."""
    from arxivcls.data import prepare
    from arxivcls.models import load_tokenizer
    from arxivcls.inputs import preflight
    from arxivcls.tuning import checkpoint_bytes, preflight_checkpoints, plan_concurrency, trial_resources

    train, tune = config.train, config.tune
    if papers_per_s is not None and gpu_figures is not None:
        raise UserError("give either --papers-per-s or --gpu-figures, not both")
    if papers_per_s is not None and not papers_per_s > 0:
        raise UserError("--papers-per-s must be > 0")
    if gpu_figures is not None:
        gpu_figures = load_gpu_figures(gpu_figures)
        if train.gpus_per_worker <= 0:
            raise UserError("--gpu-figures prices GPU workers, but this config trains on CPUs (train.gpus_per_worker is 0)")
    model_dir = preflight(config)
    resources = resources or observed_resources(address)
    available = {"CPU": resources.cpus, "GPU": resources.gpus}
    plan_concurrency(available, train, tune.num_samples)  # refuses a trial that cannot fit
    concurrency = plan_concurrency(available, train, tune.num_samples, tune.max_concurrent)

    prepared = prepare(config.data, log=lambda *_: None)
    untruncated = sample_token_lengths(prepared, load_tokenizer(model_dir), config.data.seed)
    tokens = length_stats(untruncated, config.data.max_length)
    sizes = prepared.meta["split_sizes"]
    max_epochs = max(train.epochs, int(tune.search_space.get("epochs", {}).get("high", train.epochs)))
    trial_epochs = max_trial_epochs(tune.num_samples, max_epochs)
    checkpoint = checkpoint_bytes(model_dir)

    shape = model_shape(model_dir)
    params = shape["parameters"]
    if papers_per_s:
        throughput, source = papers_per_s, "given"
    elif gpu_figures is not None:
        throughput, source = measured_gpu_throughput(gpu_figures, train, shape, tokens["mean"])
    elif train.gpus_per_worker > 0:
        throughput = (ASSUMED_GPU_TFLOPS * 1e12 * ASSUMED_GPU_UTILISATION * min(1.0, train.gpus_per_worker)
                      / train_flops(shape, 1, tokens["mean"]))
        source = (f"derived from FLOPs: {shape['matmul_parameters'] / 1e6:.0f}M matmul parameters at {tokens['mean']:.0f} "
                  f"tokens per paper (arxivcls.plan.train_flops) on a {ASSUMED_GPU_TFLOPS:g}-TFLOPS bf16 GPU (A100) "
                  f"at {ASSUMED_GPU_UTILISATION:.0%} utilisation")
    else:
        throughput = measure_cpu_papers_per_s(model_dir, train, prepared.num_labels, round(tokens["mean"]))
        source = f"measured here: {train.batch_size} papers x {tokens['mean']:.0f} tokens a step, {train.cpus_per_worker} threads"
    papers_per_epoch = sizes["train"]
    if train.max_steps_per_epoch:
        papers_per_epoch = min(papers_per_epoch, train.max_steps_per_epoch * train.batch_size * train.num_workers)

    # The throughput holds at data.max_length's mean length; other lengths cost their FLOPs.
    flops_per_s = throughput * train_flops(shape, 1, tokens["mean"])
    searched = searched_max_lengths(tune.search_space)
    max_length_costs = []
    for max_length in searched or [config.data.max_length]:
        stats = length_stats(untruncated, max_length)
        rate = flops_per_s / train_flops(shape, 1, stats["mean"]) * train.num_workers
        max_length_costs.append({
            "max_length": max_length, "mean_tokens": stats["mean"], "truncated_fraction": stats["truncated_fraction"],
            "training_tokens_per_epoch": papers_per_epoch * stats["mean"], "papers_per_s_per_worker": rate / train.num_workers,
            "epoch_seconds": (papers_per_epoch + sizes["val"] / INFERENCE_SPEEDUP) / rate})
    priced = max_length_costs[-1]  # the longest: every trial at the largest max_length it may draw
    epoch_seconds = priced["epoch_seconds"]
    waves = math.ceil(tune.num_samples / concurrency)
    wall = trial_epochs * epoch_seconds / concurrency + waves * TRIAL_FIXED_SECONDS
    gpus_per_trial = trial_resources(train).get("GPU", 0.0)
    return {
        "model_dir": model_dir, "parameters": params, "model_shape": shape,
        "data": {"papers": sum(sizes.values()), "categories": prepared.num_labels, "split_sizes": sizes,
                 "dropped_categories": len(prepared.meta["dropped_categories"])},
        "tokens_per_paper": tokens, "max_length": config.data.max_length,
        "max_length_searched": bool(searched), "max_length_costs": max_length_costs,
        "resources": dataclasses.asdict(resources), "trial_resources": trial_resources(train),
        "trials": tune.num_samples, "concurrency": concurrency,
        "max_epochs": max_epochs, "max_trial_epochs": trial_epochs,
        "halving_trial_epochs": halving_trial_epochs(tune.num_samples, max_epochs, tune.grace_period, tune.reduction_factor),
        "checkpoint_gb": checkpoint / 1e9,
        "disk_gb": preflight_checkpoints(config) * checkpoint / 1e9,
        "papers_per_s_per_worker": throughput, "throughput_source": source,
        "epoch_seconds": epoch_seconds, "wall_hours": wall / 3600,
        "gpu_hours": trial_epochs * epoch_seconds * gpus_per_trial / 3600,
    }


def format_plan(plan: dict, config: Config) -> str:
    d, t = plan["data"], plan["tokens_per_paper"]
    r = plan["resources"]
    sizes = ", ".join(f"{k} {v}" for k, v in d["split_sizes"].items())
    lines = [
        f"study '{config.tune.study}': model {config.model.name} ({plan['parameters'] / 1e6:.1f}M parameters)",
        f"data: {d['papers']} papers in {d['categories']} categories after filtering "
        f"({d['dropped_categories']} categories dropped); split {sizes}",
        f"tokens per paper (max_length {plan['max_length']}, {t['sample']} training papers): mean {t['mean']:.0f}, "
        f"median {t['p50']:.0f}, p95 {t['p95']:.0f}; {t['truncated_fraction']:.1%} truncated",
    ]
    if plan["max_length_searched"]:
        lines.append("max_length searched, per trial-epoch: " + "; ".join(
            f"{c['max_length']}: mean {c['mean_tokens']:.0f} tokens ({c['truncated_fraction']:.1%} truncated), "
            f"{c['training_tokens_per_epoch'] / 1e6:.2f}M training tokens, {c['epoch_seconds'] / 60:.1f} min"
            for c in plan["max_length_costs"]) + "; the estimate below prices the longest")
    lines += [
        f"resources ({r['source']}): CPU {r['cpus']:g}, GPU {r['gpus']:g} on {r['nodes']} node(s); one trial holds "
        + ", ".join(f"{k}={v:g}" for k, v in plan["trial_resources"].items()),
        f"trials: {plan['trials']}, {plan['concurrency']} at a time",
        f"trial-epochs at most: {plan['max_trial_epochs']} ({plan['trials']} trials x {plan['max_epochs']} epochs: ASHA "
        f"may run any trial to the end); halving all trials at each rung (grace {config.tune.grace_period}, reduction "
        f"factor {config.tune.reduction_factor}) spends {plan['halving_trial_epochs']}, about what ASHA spends in practice",
        f"checkpoint disk: {plan['checkpoint_gb']:.2f} GB per checkpoint (weights + AdamW moments); "
        f"the preflight budgets {plan['disk_gb']:.1f} GB",
        f"throughput: {plan['papers_per_s_per_worker']:.1f} training papers/s per worker ({plan['throughput_source']})",
        f"estimate at that budget: {plan['epoch_seconds'] / 60:.1f} min per trial-epoch, "
        f"{plan['wall_hours']:.2f} h wall, {plan['gpu_hours']:.1f} GPU-hours",
    ]
    return "\n".join(lines)
