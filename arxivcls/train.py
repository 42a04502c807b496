"""The Ray Train worker loop (what every trial runs) and `arxivcls train`, one Ray Train run.

Each worker: token ids from the Ray object store -> length-grouped, dynamically padded batches ->
AdamW + linear warmup/decay (+ AMP on CUDA) -> validation metrics every epoch -> ray.train.report
with a Hugging Face checkpoint when the metric improved. A restarted worker group resumes from the
newest checkpoint.
"""
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from arxivcls.config import Config, TrainConfig
from arxivcls.errors import UserError
from arxivcls.features import TokenizedSplit, collate, length_grouped_batches, sorted_batches
from arxivcls.inputs import TrialInputs, preflight, prepare_inputs
from arxivcls.rundir import (LAST_REPORT, TRAINING_STATE, RunDir, best_checkpoint, export_model, prune_checkpoints,
                             worker_print)


# ---------------------------------------------------------------- helpers used by the loop

def pick_device(train: TrainConfig, world_size: int) -> torch.device:
    import ray.train.torch

    if train.gpus_per_worker > 0 and torch.cuda.is_available():
        return ray.train.torch.get_device()
    if world_size == 1 and torch.backends.mps.is_available() and os.environ.get("ARXIVCLS_NO_MPS") != "1":
        return torch.device("mps")  # Apple silicon: single worker only (no DDP backend on MPS)
    return torch.device("cpu")


def class_weights(train_labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """Inverse square-root frequency, mean 1 over the classes present: a softer push than 1/n."""
    counts = np.bincount(train_labels, minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    weights *= (counts > 0).sum() / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def make_optimizer(model, train: TrainConfig, device: torch.device):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)  # no decay on biases and LayerNorm
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel on CPU too (docs/design.md, Training); HF's Trainer defaults to it since torch 2.8.
    return torch.optim.AdamW(groups, lr=train.learning_rate, fused=device.type in ("cuda", "cpu"))


@torch.inference_mode()
def predict_proba(model, split: TokenizedSplit, rows: np.ndarray, batch_size: int, device, amp_dtype=None):
    """Class probabilities and summed loss for `rows`, in the order of `rows`."""
    model.eval()
    sub_lengths = split.lengths[rows]
    probs = np.zeros((len(rows), model.config.num_labels), dtype=np.float32)
    loss_sum = 0.0
    for batch_pos in sorted_batches(sub_lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate(split, rows[batch_pos]).items()}
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
        probs[batch_pos] = torch.softmax(logits, dim=-1).cpu().numpy()
    return probs, loss_sum


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports kilobytes, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


# ---------------------------------------------------------------- the per-worker loop

@dataclass
class LoopState:
    """What one worker's epochs share: the model and its optimizer, the data, and progress."""

    inputs: TrialInputs
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None
    model: torch.nn.Module  # wrapped in DDP when world_size > 1
    tokenizer: object | None  # rank 0 only: it writes the checkpoints
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    train_split: TokenizedSplit
    val_split: TokenizedSplit
    batches_per_epoch: int
    start_epoch: int = 0
    best: float | None = None
    bad_epochs: int = 0
    reported_epochs: int = 0  # reported before a restart: redone, not reported again
    trained_epochs: int = 0  # every epoch computed, redone ones included: what a study really spent

    @property
    def bare_model(self):
        return self.model.module if hasattr(self.model, "module") else self.model


def train_loop_per_worker(loop_config: dict) -> None:
    state = setup(loop_config["inputs"])
    train, run = state.inputs.train, state.inputs.run
    for epoch in range(state.start_epoch, train.epochs):
        started = time.perf_counter()
        trained = train_one_epoch(state, epoch)
        if epoch < state.reported_epochs:
            # Redoing an epoch after the best checkpoint that was already reported before the
            # restart: it did not improve then (or it would have a checkpoint), and reporting it
            # again would send Tune's epoch counter backwards.
            state.bad_epochs += 1
            continue
        metrics = {**validate(state), **trained, "epoch": epoch + 1, "planned_epochs": train.epochs,
                   "trained_epochs": state.trained_epochs, "epoch_seconds": time.perf_counter() - started,
                   "peak_rss_gb": peak_rss_bytes() / 1e9}
        stop = report_epoch(state, metrics)
        if stop:
            if state.rank == 0:
                worker_print(f"early stop: {train.metric} did not improve for {train.patience} epochs")
            break
        if at_rung(state, epoch + 1, stop):
            run.wait_for_rung(epoch + 1)
    if state.rank == 0:
        run.discard_rung_state()


def setup(inputs: TrialInputs) -> LoopState:
    """Seeds, device, data, the model (from the run's restore point when it has one) and its optimizer."""
    import ray
    import ray.train
    import ray.train.torch
    from transformers import get_linear_schedule_with_warmup
    from transformers.utils import logging as transformers_logging

    from arxivcls.models import autocast_dtype, load_classifier, load_tokenizer

    transformers_logging.disable_progress_bar()  # a bar per checkpoint save, twice on the console
    train = inputs.train
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    torch.set_num_threads(max(1, train.cpus_per_worker))
    device = pick_device(train, world_size)
    amp_dtype = autocast_dtype(train.precision, device)
    worker_print(f"worker {rank}/{world_size} on node {ray.get_runtime_context().get_node_id()} device {device}")
    data = ray.get(inputs.data_ref)

    # A run started before (Ray Train restarting its workers, Tune retrying the trial) resumes.
    with inputs.run.restore_point() as checkpoint_dir:
        model = load_classifier(str(checkpoint_dir)) if checkpoint_dir else load_classifier(inputs.model_dir, inputs.id2label)
        saved = torch.load(checkpoint_dir / TRAINING_STATE, weights_only=True) if checkpoint_dir else None
    tokenizer = load_tokenizer(inputs.model_dir) if rank == 0 else None
    if tokenizer is not None:
        tokenizer.model_max_length = inputs.max_length  # the exported model truncates where training did
    if device.type == "mps":
        model = model.to(device)
    else:
        model = ray.train.torch.prepare_model(model, move_to_device=True)  # DDP when world_size > 1

    optimizer = make_optimizer(model, train, device)
    batches_per_epoch = math.ceil(len(data["train"]) / train.batch_size / world_size)
    if train.max_steps_per_epoch:
        batches_per_epoch = min(batches_per_epoch, train.max_steps_per_epoch)
    total_steps = math.ceil(batches_per_epoch / train.grad_accum_steps) * train.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, round(train.warmup_ratio * total_steps), total_steps)
    weights = class_weights(data["train"].labels, len(inputs.id2label)).to(device) if train.loss == "weighted_ce" else None
    state = LoopState(
        inputs, rank, world_size, device, amp_dtype, model, tokenizer, optimizer, scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16),
        loss_fn=torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=train.label_smoothing),
        train_split=data["train"], val_split=data["val"], batches_per_epoch=batches_per_epoch)
    if saved:
        restore_progress(state, saved)
    return state


def restore_progress(state: LoopState, saved: dict) -> None:
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.start_epoch, state.best, state.bad_epochs = saved["epoch"], saved["best"], saved["bad_epochs"]
    torch.set_rng_state(saved["torch_rng"])
    last = state.inputs.run.last_report() or {}
    state.reported_epochs = last.get("epoch", 0)
    state.trained_epochs = last.get("trained_epochs", state.reported_epochs)
    if state.rank == 0:
        worker_print(f"resumed from checkpoint after epoch {state.start_epoch}")


def train_one_epoch(state: LoopState, epoch: int) -> dict:
    """One pass over this rank's batches; the epoch's training metrics."""
    train, model, device = state.inputs.train, state.model, state.device
    model.train()
    started = time.perf_counter()
    loss_total, papers = 0.0, 0
    pad_multiple = 8 if device.type == "cuda" else 1
    batches = length_grouped_batches(state.train_split.lengths, train.batch_size, train.seed, epoch, state.rank, state.world_size)
    batches = batches[:state.batches_per_epoch]  # equal step counts on every rank keep DDP in lockstep
    for step, rows in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(state.train_split, rows, pad_to_multiple=pad_multiple).items()}
        with torch.autocast(device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = state.loss_fn(logits.float(), batch["labels"])
        state.scaler.scale(loss / train.grad_accum_steps).backward()
        if (step + 1) % train.grad_accum_steps == 0 or step + 1 == len(batches):
            optimizer_step(state)
        loss_total += loss.item() * len(rows)
        papers += len(rows)
    seconds = time.perf_counter() - started
    state.trained_epochs += 1
    return {"train_loss": loss_total / max(1, papers), "train_papers_per_s": papers * state.world_size / seconds,
            "train_seconds_per_step": seconds / max(1, len(batches))}


def optimizer_step(state: LoopState) -> None:
    state.scaler.unscale_(state.optimizer)
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()


def validate(state: LoopState) -> dict:
    """Validation metrics over the whole split: every rank scores a shard, then they gather."""
    from arxivcls.metrics import classification_metrics

    rows = np.arange(state.rank, len(state.val_split), state.world_size)
    probs, loss_sum = predict_proba(state.bare_model, state.val_split, rows, state.inputs.train.eval_batch_size,
                                    state.device, state.amp_dtype)
    labels = state.val_split.labels[rows]
    if state.world_size > 1:
        gathered = [None] * state.world_size
        torch.distributed.all_gather_object(gathered, (probs, labels, loss_sum))
        probs = np.concatenate([g[0] for g in gathered])
        labels = np.concatenate([g[1] for g in gathered])
        loss_sum = sum(g[2] for g in gathered)
    metrics = {f"val_{k}": float(v) for k, v in classification_metrics(labels, probs).items()}
    return {**metrics, "val_loss": loss_sum / max(1, len(labels))}


def at_rung(state: LoopState, epoch: int, stop: bool) -> bool:
    """After `epoch`, a rung of synchronous halving that this run would train past."""
    return epoch in state.inputs.wait_at_epochs and epoch < state.inputs.train.epochs and not stop


def report_epoch(state: LoopState, metrics: dict) -> bool:
    """Patience, the checkpoint (improving epochs only), ray.train.report and the run's
    last_report.json. Returns whether patience ran out."""
    train, run = state.inputs.train, state.inputs.run
    improved = better(metrics[train.metric], state.best, train.mode)
    if improved:
        state.best, state.bad_epochs = metrics[train.metric], 0
    else:
        state.bad_epochs += 1
    stop = state.bad_epochs >= train.patience
    metrics.update({f"best_{train.metric}": state.best, "stopped_by_patience": int(stop)})
    write = partial(write_checkpoint, state, metrics)
    # The study may pause this trial at a rung and kill it while it waits: an epoch that is not
    # its best is kept as the rung state, before the report, so it resumes from this epoch.
    if state.rank == 0 and not improved and run.local and at_rung(state, metrics["epoch"], stop):
        run.save_rung_state(write)
    report(state, metrics, write if state.rank == 0 and improved else None)
    if state.rank == 0:  # after the report: a line printed here means its checkpoint is persisted
        run.write(LAST_REPORT, json.dumps(metrics))
        worker_print(f"epoch {metrics['epoch']}/{train.epochs} " + " ".join(
            f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_weighted_f1"))
            + f" ({metrics['epoch_seconds']:.0f}s, {metrics['train_papers_per_s']:.1f} papers/s)")
    return stop


def write_checkpoint(state: LoopState, metrics: dict, directory: Path) -> None:
    state.bare_model.save_pretrained(directory, safe_serialization=True)
    state.tokenizer.save_pretrained(directory)
    torch.save({"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                "epoch": metrics["epoch"], "best": state.best, "bad_epochs": state.bad_epochs,
                "torch_rng": torch.get_rng_state()}, directory / TRAINING_STATE)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=1))


def report(state: LoopState, metrics: dict, write) -> None:
    """ray.train.report, with a checkpoint that `write(directory)` writes when given. Only
    improving epochs are checkpointed (docs/design.md, Checkpoints)."""
    import ray.train

    run = state.inputs.run
    if write is None:
        ray.train.report(metrics)
    elif run.local:
        published = run.publish(write, state.inputs.train.checkpoint_keep)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(published)),
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD)
    else:  # object store: Ray uploads it and keeps `keep` (+ 1 while replacing)
        with tempfile.TemporaryDirectory() as staging:
            write(Path(staging))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))


# ---------------------------------------------------------------- one Ray Train run (driver side)

def build_trainer(inputs: TrialInputs, name: str, callbacks=(), loop=train_loop_per_worker):
    """A TorchTrainer for the run `name` under inputs.train.storage_path. `loop`: benchmarks run
    Hugging Face's Trainer here, in the same surroundings."""
    import ray.train
    from ray.train.torch import TorchTrainer

    train = inputs.train
    run = RunDir(train.storage_path, name)
    run.forget_deleted_checkpoints()
    # Ray Train passes this on from the process that calls fit() to its controller (docs/design.md, Ray runtime).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # freed blocks stay in the heap instead of being unmapped (docs/design.md, Training)
    malloc_env = {var: os.environ.get(var, str(2**32)) for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    use_gpu = train.gpus_per_worker > 0
    resources = {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        loop,
        train_loop_config={"inputs": replace(inputs, run=run)},
        scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=run.storage,
            # On a local or NFS disk the loop keeps `keep` checkpoints itself, so Ray deletes
            # nothing; its result then also lists checkpoints already deleted.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=None if run.local else train.checkpoint_keep,
                checkpoint_score_attribute=train.metric, checkpoint_score_order=train.mode),
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
    prune_checkpoints(result, train.checkpoint_keep, train.metric, train.mode)
    checkpoint, value = best_checkpoint(result, train.metric, train.mode)
    if checkpoint is None:
        why = str(result.error).splitlines()[0] if result.error else "no epoch was reported"
        raise UserError(f"training finished without a checkpoint: {why}")
    output = export_model(checkpoint.path, train.output_dir or str(Path(config.tune.models_dir) / config.tune.study / "train"))
    log(f"best {train.metric}={value:.4f}; model saved to {output} ({time.time() - started:.0f}s)")
    return {"model_dir": output, "metric": value, "metrics": RunDir(train.storage_path, run_name).last_report()}
