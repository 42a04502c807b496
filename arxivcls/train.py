"""The Ray Train worker loop (what every trial runs) and `arxivcls train`, one Ray Train run.

Each worker: token ids from the Ray object store -> length-grouped, dynamically padded batches ->
AdamW + linear warmup/decay (+ autocast) -> validation metrics every epoch -> ray.train.report with
a checkpoint of the epoch. Ray keeps the checkpoints (CheckpointConfig: the best `checkpoint_keep`
by the metric, and the latest); a restarted worker group resumes from the latest.
"""
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arxivcls.checkpoints import TRAINING_STATE, best_checkpoint, export_model, storage_uri
from arxivcls.config import Config, TrainConfig
from arxivcls.errors import UserError
from arxivcls.features import length_grouped_batches, truncate_split
from arxivcls.inputs import TrialInputs, preflight, prepare_inputs
from arxivcls.steps import batch_to, class_weights, forward_backward, make_optimizer, optimizer_step, predict_proba


def worker_print(message: str) -> None:
    """One console line from a Train worker. Ray Train's patched print() in workers both tees to
    stdout and logs to a handler that prints too: the console would show the line twice."""
    print(message, file=sys.__stdout__, flush=True)


def pick_device(train: TrainConfig, world_size: int) -> torch.device:
    import ray.train.torch

    if train.gpus_per_worker > 0 and torch.cuda.is_available():
        return ray.train.torch.get_device()
    if world_size == 1 and torch.backends.mps.is_available() and os.environ.get("ARXIVCLS_NO_MPS") != "1":
        return torch.device("mps")  # Apple silicon: single worker only (no DDP backend on MPS)
    return torch.device("cpu")


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports kilobytes, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


# ---------------------------------------------------------------- the per-worker loop

def train_loop_per_worker(loop_config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from transformers import get_linear_schedule_with_warmup
    from transformers.utils import logging as transformers_logging

    from arxivcls.models import autocast_dtype, load_classifier, load_tokenizer

    inputs: TrialInputs = loop_config["inputs"]
    train = inputs.train
    transformers_logging.disable_progress_bar()  # a bar per checkpoint save, twice on the console
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    torch.set_num_threads(max(1, train.cpus_per_worker))
    device = pick_device(train, world_size)
    amp_dtype = autocast_dtype(train.precision, device)
    node_ip = ray.util.get_node_ip_address()
    worker_print(f"worker {rank}/{world_size} on node {node_ip} id {ray.get_runtime_context().get_node_id()} device {device}")
    data = ray.get(inputs.data_ref)
    train_split, val_split = (truncate_split(data[name], inputs.max_length) for name in ("train", "val"))

    # [1] restore: a run restarted by Ray Train (worker lost) or by Tune (trial retried, study
    # resumed) goes on from the latest checkpoint Ray kept
    checkpoint = ray.train.get_checkpoint()
    saved = None
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            model = load_classifier(checkpoint_dir)
            saved = torch.load(Path(checkpoint_dir) / TRAINING_STATE, weights_only=True)
    else:
        model = load_classifier(inputs.model_dir, inputs.id2label)
    tokenizer = load_tokenizer(inputs.model_dir) if rank == 0 else None
    if tokenizer is not None:
        tokenizer.model_max_length = inputs.max_length  # the exported model truncates where training did
    model = model.to(device) if device.type == "mps" else ray.train.torch.prepare_model(model)  # DDP when world_size > 1
    bare_model = model.module if hasattr(model, "module") else model

    optimizer = make_optimizer(model, train.learning_rate, train.weight_decay, device)
    steps_per_epoch = math.ceil(len(train_split) / train.batch_size / world_size)
    if train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.max_steps_per_epoch)
    total_updates = math.ceil(steps_per_epoch / train.grad_accum_steps) * train.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(train.warmup_ratio * total_updates), total_updates)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    weights = class_weights(train_split.labels, len(inputs.id2label)).to(device) if train.loss == "weighted_ce" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=train.label_smoothing)
    start_epoch, best, bad_epochs, trained_epochs = 0, None, 0, 0
    if saved:
        if saved["epoch"] >= train.epochs or saved["bad_epochs"] >= train.patience:
            if rank == 0:  # a finished run started again (its study resumed)
                worker_print("its run had finished: its last result again, nothing retrained")
            ray.train.report(saved["metrics"])
            return
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        start_epoch, best, bad_epochs, trained_epochs = saved["epoch"], saved["best"], saved["bad_epochs"], saved["trained_epochs"]
        if rank == 0:
            worker_print(f"resumed from checkpoint after epoch {start_epoch}")

    for epoch in range(start_epoch, train.epochs):
        if bad_epochs >= train.patience:
            break  # restored after the epoch that ran out of patience
        # [2] one pass over this rank's batches (equal step counts on every rank keep DDP in lockstep)
        started = time.perf_counter()
        model.train()
        batches = length_grouped_batches(train_split.lengths, train.batch_size, train.seed, epoch, rank, world_size)
        batches = batches[:steps_per_epoch]
        loss_total, papers = 0.0, 0
        for step, rows in enumerate(batches):
            loss = forward_backward(model, batch_to(train_split, rows, device), loss_fn, amp_dtype, scaler, train.grad_accum_steps)
            if (step + 1) % train.grad_accum_steps == 0 or step + 1 == len(batches):
                optimizer_step(model, optimizer, scheduler, scaler)
            loss_total += loss * len(rows)
            papers += len(rows)
        train_seconds = time.perf_counter() - started
        trained_epochs += 1

        # [3] validate on the whole split, then patience
        metrics = validate(bare_model, val_split, train.eval_batch_size, device, amp_dtype, rank, world_size)
        if better(metrics[train.metric], best, train.mode):
            best, bad_epochs = metrics[train.metric], 0
        else:
            bad_epochs += 1
        metrics.update({
            "epoch": epoch + 1, "planned_epochs": train.epochs, "trained_epochs": trained_epochs,
            f"best_{train.metric}": best, "stopped_by_patience": int(bad_epochs >= train.patience),
            "train_loss": loss_total / max(1, papers), "train_papers_per_s": papers * world_size / train_seconds,
            "train_seconds_per_step": train_seconds / max(1, len(batches)),
            "epoch_seconds": time.perf_counter() - started, "peak_rss_gb": peak_rss_bytes() / 1e9, "worker_node_ip": node_ip})

        # [4] report with this epoch's checkpoint (rank 0 writes it; Ray keeps the best and the latest)
        with tempfile.TemporaryDirectory() as staging:
            epoch_checkpoint = None
            if rank == 0:
                bare_model.save_pretrained(staging, safe_serialization=True)
                tokenizer.save_pretrained(staging)
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                            "epoch": epoch + 1, "best": best, "bad_epochs": bad_epochs, "trained_epochs": trained_epochs,
                            "metrics": metrics, "torch_rng": torch.get_rng_state()}, Path(staging) / TRAINING_STATE)
                (Path(staging) / "metrics.json").write_text(json.dumps(metrics, indent=1))
                epoch_checkpoint = ray.train.Checkpoint.from_directory(staging)
            ray.train.report(metrics, checkpoint=epoch_checkpoint)
        if rank == 0:
            worker_print(f"epoch {epoch + 1}/{train.epochs} " + " ".join(
                f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_weighted_f1"))
                + f" ({metrics['epoch_seconds']:.0f}s, {metrics['train_papers_per_s']:.1f} papers/s)")
            if bad_epochs >= train.patience:
                worker_print(f"early stop: {train.metric} did not improve for {train.patience} epochs")


def validate(model, split, batch_size: int, device, amp_dtype, rank: int, world_size: int) -> dict:
    """Validation metrics over the whole split: every rank scores a shard, then they gather."""
    from arxivcls.metrics import classification_metrics

    rows = np.arange(rank, len(split), world_size)
    probs, loss_sum = predict_proba(model, split, rows, batch_size, device, amp_dtype)
    labels = split.labels[rows]
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, (probs, labels, loss_sum))
        probs = np.concatenate([g[0] for g in gathered])
        labels = np.concatenate([g[1] for g in gathered])
        loss_sum = sum(g[2] for g in gathered)
    metrics = {f"val_{k}": float(v) for k, v in classification_metrics(labels, probs).items()}
    return {**metrics, "val_loss": loss_sum / max(1, len(labels))}


# ---------------------------------------------------------------- one Ray Train run (driver side)

def build_trainer(inputs: TrialInputs, name: str, callbacks=(), loop=train_loop_per_worker):
    """A TorchTrainer for the run `name` under inputs.train.storage_path; a run of that name that
    exists is resumed by Ray from its latest checkpoint. `loop`: benchmarks run Hugging Face's
    Trainer here, in the same surroundings."""
    import ray.train
    from ray.train.torch import TorchTrainer

    train = inputs.train
    # Ray Train passes this on from the process that calls fit() to its controller (docs/design.md, Ray runtime).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # freed blocks stay in the heap instead of being unmapped (docs/design.md, Training)
    malloc_env = {var: os.environ.get(var, str(2**32)) for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    use_gpu = train.gpus_per_worker > 0
    resources = {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        loop,
        train_loop_config={"inputs": inputs},
        scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_uri(train.storage_path),
            # the best `checkpoint_keep` by the metric; Ray also keeps the latest, to resume from
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=train.checkpoint_keep,
                                                         checkpoint_score_attribute=train.metric,
                                                         checkpoint_score_order=train.mode),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": malloc_env},
        ),
    )


def run_training(config: Config, address: str | None = None, log=print) -> dict:
    from arxivcls.raycluster import connect_ray

    preflight(config)
    connect_ray(address, log=log)
    inputs = prepare_inputs(config, log=log)
    trial = inputs.trial.with_train(metric=config.tune.metric, mode=config.tune.mode)
    train = trial.train
    log(f"training {config.model.name} on {len(inputs.splits['train'])} papers "
        f"({inputs.prepared.num_labels} categories), validating on {len(inputs.splits['val'])}")
    started = time.time()
    run_name = f"train-{config.tune.study}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = build_trainer(trial, name=run_name).fit()
    checkpoint, value = best_checkpoint(result, train.metric, train.mode)
    if checkpoint is None:
        why = str(result.error).splitlines()[0] if result.error else "no epoch was reported"
        raise UserError(f"training finished without a checkpoint: {why}")
    output = export_model(checkpoint.path, train.output_dir or str(Path(config.tune.models_dir) / config.tune.study / "train"))
    log(f"best {train.metric}={value:.4f}; model saved to {output} ({time.time() - started:.0f}s)")
    return {"model_dir": output, "metric": value, "metrics": result.metrics}
