"""The Ray Train worker loop (what every trial runs) and `arxivcls train`, one Ray Train run.

Each worker: token ids from the Ray object store -> length-grouped, dynamically padded batches ->
AdamW + linear warmup/decay (+ AMP on CUDA) -> validation metrics every epoch -> ray.train.report
with a Hugging Face checkpoint when the metric improved. A restarted worker group resumes from the
newest checkpoint.
"""
import contextlib
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arxivcls.config import Config, TrainConfig
from arxivcls.files import atomic_write_text
from arxivcls.features import TokenizedSplit, collate, length_grouped_batches, sorted_batches

TRAINING_STATE = "training_state.pt"  # optimizer/scheduler/progress; not part of the exported model
FINAL_RESULT = "final_result.json"  # a finished run's result, replayed if Tune restarts its trial
# The metrics a run reported last. A restarted run reads its epoch so as not to report epochs
# again; and Ray's Result.metrics holds the latest *checkpoint's* metrics, not the last epoch's.
LAST_REPORT = "last_report.json"
# A checkpoint being written, and one being replaced: hidden names, never counted as checkpoints.
INCOMING, RETIRED = ".incoming-", ".retired-"
# Where a trial paused at a rung (tune.scheduler: sync) resumes from when that epoch was not its
# best: it holds what a checkpoint holds, but is never reported, exported or counted as one.
RUNG_STATE = ".rung-state"
RUNG_WAIT_TIMEOUT_S = 900.0  # a rung decision that never comes must not hold a worker forever


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
    # The fused kernel on CPU too: 10 ms a step for MiniLM's 22M parameters against 69 ms for the
    # default per-tensor loop (2 threads); HF's Trainer defaults to it since torch 2.8.
    return torch.optim.AdamW(groups, lr=train.learning_rate, fused=device.type in ("cuda", "cpu"))


def linear_warmup_decay(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


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


def is_local(storage: str) -> bool:
    return "://" not in storage


def visible_checkpoints(run_dir: Path) -> list[Path]:
    """A run's checkpoint directories, oldest first (their names are UTC timestamps)."""
    return sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())


def finish_interrupted_publish(run_dir: Path) -> None:
    """Complete or undo a publish_checkpoint that a crash cut short. A checkpoint is retired
    only after the incoming one is complete, so: a retired one -> the incoming one is whole,
    publish it; no retired one -> the incoming one may be half-written, delete it."""
    retired = sorted(run_dir.glob(f"{RETIRED}*"))
    for incoming in sorted(run_dir.glob(f"{INCOMING}*")):
        if retired:
            incoming.rename(run_dir / incoming.name.removeprefix(INCOMING))
        else:
            shutil.rmtree(incoming)
    for path in retired:
        shutil.rmtree(path)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """Where a restarted run resumes from, whatever moment a crash interrupted (read-only: every
    rank asks). Only improving epochs are checkpointed, so the newest is the best."""
    candidates = visible_checkpoints(run_dir)
    if any(run_dir.glob(f"{RETIRED}*")):  # crashed mid-publish, after the incoming one was complete
        candidates += sorted(run_dir.glob(f"{INCOMING}*"))
    return max(candidates, key=lambda p: p.name.removeprefix(INCOMING), default=None)


def publish_checkpoint(run_dir: Path, write, keep: int) -> Path:
    """Add a checkpoint to a run directory on a local or NFS disk without ever holding more than
    `keep` checkpoints there, and without a moment with nothing to resume from: write the new one
    under a hidden name, move the oldest aside (hidden), rename the new one into place, delete the
    old. Renames are atomic; newest_checkpoint and finish_interrupted_publish handle a crash at
    any point. (Ray's own upload writes the new checkpoint before deleting the old: keep + 1.)"""
    run_dir.mkdir(parents=True, exist_ok=True)
    finish_interrupted_publish(run_dir)
    discard_rung_state(run_dir)  # superseded by the new, newer checkpoint
    now = time.time_ns()
    name = f"checkpoint_{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}"
    incoming = run_dir / f"{INCOMING}{name}"
    write(incoming)
    kept = visible_checkpoints(run_dir)
    retired = [old.rename(run_dir / f"{RETIRED}{old.name}") for old in kept[:max(0, len(kept) + 1 - keep)]]
    incoming.rename(run_dir / name)
    for path in retired:
        shutil.rmtree(path)
    return run_dir / name


def save_rung_state(run_dir: Path, write) -> None:
    """Keep the state of a rung epoch that is not the run's best (atomically; replaces an older one)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / f"{RUNG_STATE}.incoming"
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(run_dir / RUNG_STATE, ignore_errors=True)
    staging.rename(run_dir / RUNG_STATE)


def discard_rung_state(run_dir: Path) -> None:
    """Delete a run's rung state, and one a crash left half-written."""
    for state in (RUNG_STATE, f"{RUNG_STATE}.incoming"):
        shutil.rmtree(run_dir / state, ignore_errors=True)


@contextlib.contextmanager
def restore_point(loop_config: dict):
    """The directory of the checkpoint to resume from, or None for a fresh run."""
    import ray.train

    if is_local(loop_config["run_storage"]):
        run_dir = Path(loop_config["run_storage"]) / loop_config["run_name"]
        # a rung state exists only while it is newer than every checkpoint (a publish deletes it)
        yield run_dir / RUNG_STATE if (run_dir / RUNG_STATE).is_dir() else newest_checkpoint(run_dir)
        return
    checkpoint = ray.train.get_checkpoint()  # object stores: Ray's own checkpoint bookkeeping
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as checkpoint_dir:
        yield Path(checkpoint_dir)


def continue_marker(epoch: int) -> str:
    """The run file that lets a trial train past rung `epoch` of synchronous successive halving."""
    return f"continue_after_epoch_{epoch}"


def trial_run_name(trial_id: str) -> str:
    """The Train run of a study's trial: a stable name, so a restarted trial finds its checkpoints."""
    return f"train-{trial_id}"


def mark_continue(storage_path: str, trial_id: str, epoch: int) -> None:
    write_run_file(storage_path, trial_run_name(trial_id), continue_marker(epoch), "")


def wait_for_rung(loop_config: dict, epoch: int, poll_s: float = 0.2) -> None:
    """Hold at a rung epoch until the study lets this trial go on (arxivcls.halving). A trial the
    study pauses or stops is killed while it waits, so it never trains an epoch nobody asked for."""
    deadline = time.monotonic() + RUNG_WAIT_TIMEOUT_S
    while read_run_file(loop_config["run_storage"], loop_config["run_name"], continue_marker(epoch)) is None:
        if time.monotonic() > deadline:
            print(f"no decision at rung epoch {epoch} after {RUNG_WAIT_TIMEOUT_S:.0f}s: going on", flush=True)
            return
        time.sleep(poll_s)


# ---------------------------------------------------------------- the per-worker loop

def train_loop_per_worker(loop_config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    from arxivcls.metrics import classification_metrics
    from arxivcls.models import autocast_dtype, load_classifier, load_tokenizer

    train = TrainConfig(**loop_config["train"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    torch.set_num_threads(max(1, train.cpus_per_worker))
    device = pick_device(train, world_size)
    amp_dtype = autocast_dtype(train.precision, device)
    print(f"worker {rank}/{world_size} on node {ray.get_runtime_context().get_node_id()} device {device}", flush=True)

    data = ray.get(loop_config["data_ref"])
    train_split, val_split = data["train"], data["val"]
    id2label = loop_config["id2label"]

    # Restore from the newest checkpoint when this run was started before (Ray Train restarting
    # its workers after a failure, or Tune retrying the trial).
    state = None
    with restore_point(loop_config) as checkpoint_dir:
        if checkpoint_dir:
            model = load_classifier(str(checkpoint_dir))
            state = torch.load(checkpoint_dir / TRAINING_STATE, weights_only=True)
        else:
            model = load_classifier(loop_config["model_dir"], id2label)
    tokenizer = load_tokenizer(loop_config["model_dir"]) if rank == 0 else None

    if device.type == "mps":
        model = model.to(device)
    else:
        model = ray.train.torch.prepare_model(model, move_to_device=True)  # DDP when world_size > 1
    bare_model = model.module if hasattr(model, "module") else model

    optimizer = make_optimizer(model, train, device)
    batches_per_epoch = math.ceil(len(train_split) / train.batch_size / world_size)
    if train.max_steps_per_epoch:
        batches_per_epoch = min(batches_per_epoch, train.max_steps_per_epoch)
    steps_per_epoch = math.ceil(batches_per_epoch / train.grad_accum_steps)
    total_steps = steps_per_epoch * train.epochs
    scheduler = linear_warmup_decay(optimizer, round(train.warmup_ratio * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    weights = class_weights(train_split.labels, len(id2label)).to(device) if train.loss == "weighted_ce" else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=train.label_smoothing)

    # trained_epochs counts every epoch computed, the ones redone after a restart included: what
    # a study really spent (epochs_run counts distinct epochs).
    start_epoch, best, bad_epochs, reported_epochs, trained_epochs = 0, None, 0, 0, 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        torch.set_rng_state(state["torch_rng"])
        last = last_reported_metrics(loop_config["run_storage"], loop_config["run_name"]) or {}
        reported_epochs = last.get("epoch", 0)
        trained_epochs = last.get("trained_epochs", reported_epochs)
        if rank == 0:
            print(f"resumed from checkpoint after epoch {start_epoch}")
    wait_at_epochs = set(loop_config.get("wait_at_epochs", ()))
    local_run_dir = Path(loop_config["run_storage"]) / loop_config["run_name"] if is_local(loop_config["run_storage"]) else None

    pad_multiple = 8 if device.type == "cuda" else 1
    val_rows = np.arange(rank, len(val_split), world_size)
    for epoch in range(start_epoch, train.epochs):
        model.train()
        started = time.perf_counter()
        loss_total, papers = 0.0, 0
        batches = length_grouped_batches(train_split.lengths, train.batch_size, train.seed, epoch, rank, world_size)
        batches = batches[:batches_per_epoch]  # equal step counts on every rank keep DDP in lockstep
        for step, rows in enumerate(batches):
            batch = {k: v.to(device, non_blocking=True) for k, v in collate(train_split, rows, pad_to_multiple=pad_multiple).items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = loss_fn(logits.float(), batch["labels"])
            scaler.scale(loss / train.grad_accum_steps).backward()
            if (step + 1) % train.grad_accum_steps == 0 or step + 1 == len(batches):
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            loss_total += loss.item() * len(rows)
            papers += len(rows)
        train_seconds = time.perf_counter() - started
        trained_epochs += 1
        if epoch < reported_epochs:
            # Redoing an epoch after the best checkpoint that was already reported before the
            # restart: it did not improve then (or it would have a checkpoint), and reporting it
            # again would send Tune's epoch counter backwards.
            bad_epochs += 1
            continue

        probs, val_loss_sum = predict_proba(bare_model, val_split, val_rows, train.eval_batch_size, device, amp_dtype)
        labels = val_split.labels[val_rows]
        if world_size > 1:  # every rank scored a shard of validation; gather the whole of it
            gathered = [None] * world_size
            torch.distributed.all_gather_object(gathered, (probs, labels, val_loss_sum))
            probs = np.concatenate([g[0] for g in gathered])
            labels = np.concatenate([g[1] for g in gathered])
            val_loss_sum = sum(g[2] for g in gathered)
        scores = classification_metrics(labels, probs)
        metrics = {f"val_{k}": float(v) for k, v in scores.items()}
        metrics.update(
            val_loss=val_loss_sum / max(1, len(labels)), train_loss=loss_total / max(1, papers),
            epoch=epoch + 1, planned_epochs=train.epochs, trained_epochs=trained_epochs,
            epoch_seconds=time.perf_counter() - started, train_papers_per_s=papers * world_size / train_seconds,
            train_seconds_per_step=train_seconds / max(1, len(batches)), peak_rss_gb=peak_rss_bytes() / 1e9,
        )
        improved = better(metrics[train.metric], best, train.mode)
        if improved:
            best, bad_epochs = metrics[train.metric], 0
        else:
            bad_epochs += 1
        stop = bad_epochs >= train.patience
        metrics.update({f"best_{train.metric}": best, "stopped_by_patience": int(stop)})

        # Checkpoint only epochs that improve the metric: they are the only ones a study ever
        # exports, the newest checkpoint is then the best (so holding `keep` never drops the one
        # to resume from), and a SciBERT checkpoint is ~440 MB to write. A restarted run resumes
        # from its best epoch and redoes the epochs after it.
        def write_checkpoint(directory: Path) -> None:
            bare_model.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1, "best": best, "bad_epochs": bad_epochs,
                        "torch_rng": torch.get_rng_state()}, directory / TRAINING_STATE)
            (directory / "metrics.json").write_text(json.dumps(metrics, indent=1))

        # At a rung of synchronous halving the study may pause this trial (and kill it while it
        # waits): an epoch that is not the best is kept as the rung state, before the report, so the
        # trial resumes from this epoch rather than redoing the epochs since its best.
        at_rung = epoch + 1 in wait_at_epochs and epoch + 1 < train.epochs and not stop
        if rank == 0 and at_rung and not improved and local_run_dir:
            save_rung_state(local_run_dir, write_checkpoint)
        if rank == 0 and improved and local_run_dir:
            published = publish_checkpoint(local_run_dir, write_checkpoint, train.checkpoint_keep)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(published)),
                             checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD)
        elif rank == 0 and improved:  # object store: Ray uploads it and keeps `keep` (+ 1 while replacing)
            with tempfile.TemporaryDirectory() as staging:
                write_checkpoint(Path(staging))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(staging))
        else:
            ray.train.report(metrics)
        if rank == 0:  # after the report: a line printed here means its checkpoint is persisted
            write_run_file(loop_config["run_storage"], loop_config["run_name"], LAST_REPORT, json.dumps(metrics))
            print(f"epoch {epoch + 1}/{train.epochs} " + " ".join(
                f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_weighted_f1")),
                f"({metrics['epoch_seconds']:.0f}s, {metrics['train_papers_per_s']:.1f} papers/s)", flush=True)
        if stop:
            if rank == 0:
                print(f"early stop: {train.metric} did not improve for {train.patience} epochs", flush=True)
            break
        if at_rung:
            wait_for_rung(loop_config, epoch + 1)
    if rank == 0 and local_run_dir:
        discard_rung_state(local_run_dir)


# ---------------------------------------------------------------- one Ray Train run (driver side)

def connect_ray(address: str | None = None, log=print) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        info = ray.init(address=address, logging_level="WARNING")
    else:
        info = start_local_ray()
    import logging

    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    dashboard = info.dashboard_url
    log(f"ray: {'joined ' + address if address else 'started a local cluster'}; dashboard http://{dashboard}"
        if dashboard else "ray: connected (no dashboard)")


def start_local_ray(num_cpus: int | None = None, env_vars: dict | None = None):
    """A local cluster. The dashboard (and token auth, on by default in Ray 2.60) stay on loopback.

    Ray Train's PlacementGroupCleaner (which frees the workers of a trial ASHA stopped) finds the
    state API by auto-detection, and that fails when another Ray instance runs on the machine:
    the freed CPUs never come back and the next trial's worker group times out forever. So the
    dashboard gets a known port and every worker of this job is told where it is."""
    import socket

    import ray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env_vars = {**(env_vars or {}), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    return ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                    include_dashboard=True, logging_level="WARNING", runtime_env={"env_vars": env_vars})


def preflight(config: Config) -> str:
    """Fail on a bad model name or data path before starting Ray (seconds, not a minute).
    Returns the model's local directory."""
    from arxivcls.errors import UserError
    from arxivcls.models import resolve_model

    model_dir = resolve_model(config.model.name)
    if not Path(config.data.path).is_file():
        raise UserError(f"data file not found: {config.data.path}")
    return model_dir


def prepare_inputs(config: Config, log=print) -> dict:
    """Prepare + tokenize once; put the token ids in the object store for every worker of every trial."""
    import ray

    from arxivcls.data import prepare
    from arxivcls.features import tokenize_split
    from arxivcls.models import load_tokenizer, resolve_model

    model_dir = resolve_model(config.model.name)
    prepared = prepare(config.data, log=log)
    tokenizer = load_tokenizer(model_dir)
    tokenization = {"tokenized": 0, "cache_hits": 0}
    splits = {name: tokenize_split(prepared, name, tokenizer, config.data.max_length, config.data.cache_dir,
                                   log=log, stats=tokenization)
              for name in ("train", "val")}  # test is read by the evaluation stage only
    return {
        "prepared": prepared, "model_dir": model_dir, "splits": splits, "tokenization": tokenization,
        "loop_base": {"model_dir": model_dir, "id2label": prepared.id2label, "data_ref": ray.put(splits)},
    }


def storage_uri(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if is_local(path) else path


RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of a run's reported checkpoints


def forget_deleted_checkpoints(run_dir: Path) -> None:
    """Ray Train restarts a run under an existing name (a Tune retry, a trial resumed after a
    pause) only if every checkpoint its snapshot lists still exists; publish_checkpoint deletes all
    but `keep`. Drop the deleted ones from the snapshot (atomically; an unknown format is left alone)."""
    path = run_dir / RAY_SNAPSHOT
    if not path.is_file():
        return
    snapshot = json.loads(path.read_text())
    results, indices = snapshot.get("checkpoint_results"), snapshot.get("checkpoint_report_indices")
    if not isinstance(results, list) or not isinstance(indices, list) or len(results) != len(indices):
        return
    kept = [(r, i) for r, i in zip(results, indices) if (run_dir / r.get("checkpoint_dir_name", "")).is_dir()]
    if len(kept) == len(results):
        return
    snapshot["checkpoint_results"] = [r for r, _ in kept]
    snapshot["checkpoint_report_indices"] = [i for _, i in kept]
    names = {r["checkpoint_dir_name"] for r, _ in kept}
    latest = snapshot.get("latest_checkpoint_result")
    if latest is not None and latest.get("checkpoint_dir_name") not in names:
        snapshot["latest_checkpoint_result"] = kept[-1][0] if kept else None
    pending = [(r, v) for r, v in zip(snapshot.get("pending_training_results", []), snapshot.get("pending_validation_specs", []))
               if r.get("checkpoint_dir_name") in names]
    snapshot["pending_training_results"] = [r for r, _ in pending]
    snapshot["pending_validation_specs"] = [v for _, v in pending]
    atomic_write_text(path, json.dumps(snapshot))


def build_trainer(train: TrainConfig, loop_base: dict, name: str, callbacks=(), loop=train_loop_per_worker):
    import ray.train
    from ray.train.torch import TorchTrainer

    if is_local(train.storage_path):
        forget_deleted_checkpoints(Path(storage_uri(train.storage_path)) / name)

    # The controller polls its workers every 2 s by default and notices a finished loop only at
    # the next poll: ~3 s of every trial's fixed cost (benchmarks/overhead: 13.2 s -> 10.3 s).
    # Ray Train passes this variable on from the process that calls fit() to its controller.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # glibc hands every allocation above its mmap threshold (at most 32 MB, adjusted as it goes)
    # to a fresh mmap and unmaps it on free, so each training step page-faults in new zeroed pages
    # for its large activations and gradients. In Ray Train workers that made CPU training 12-18%
    # slower (benchmarks/train_throughput: 4.4 -> 5.0 papers/s over 48 steps, 4.9 -> 5.6-5.8 over
    # 24; py-spy showed munmap and libc page-zeroing beside the GEMMs). A fixed threshold keeps
    # freed blocks in the heap for reuse.
    malloc_env = {name: os.environ.get(name, str(2**32)) for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    use_gpu = train.gpus_per_worker > 0
    resources = {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if use_gpu else {})}
    return TorchTrainer(
        loop,  # benchmarks run Hugging Face's Trainer here, in the same surroundings
        train_loop_config={**loop_base, "train": dataclasses.asdict(train), "run_storage": storage_uri(train.storage_path), "run_name": name},
        scaling_config=ray.train.ScalingConfig(num_workers=train.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_uri(train.storage_path),
            # On a local or NFS disk the loop keeps `keep` checkpoints itself (publish_checkpoint),
            # so Ray deletes nothing; its result then also lists checkpoints already deleted.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=None if is_local(storage_uri(train.storage_path)) else train.checkpoint_keep,
                checkpoint_score_attribute=train.metric, checkpoint_score_order=train.mode),
            failure_config=ray.train.FailureConfig(max_failures=train.max_failures),
            callbacks=list(callbacks),
            worker_runtime_env={"env_vars": malloc_env},
        ),
    )


def export_model(checkpoint_path: str, output_dir: str) -> str:
    """Copy a checkpoint's Hugging Face files (not the optimizer state) to output_dir, atomically."""
    import pyarrow.fs

    output = Path(output_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-"))
    fs, root = resolve_filesystem(checkpoint_path)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
        if info.type == pyarrow.fs.FileType.File and info.base_name != TRAINING_STATE:
            with fs.open_input_stream(info.path) as src, open(staging / info.base_name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    old = output.with_name(f".{output.name}.old")
    if output.exists():
        os.replace(output, old)
    os.replace(staging, output)
    shutil.rmtree(old, ignore_errors=True)
    return str(output)


def rank_by_score(scored: list[tuple], mode: str) -> list[tuple]:
    """[(item, score), ...] in report order -> best first; among equal scores the later report
    first, as Ray's own checkpoint retention does. One ranking for picking and for pruning."""
    order = sorted(range(len(scored)), key=lambda i: (scored[i][1] if mode == "max" else -scored[i][1], i), reverse=True)
    return [scored[i] for i in order]


def ranked_checkpoints(result, metric: str, mode: str) -> list[tuple]:
    """[(Checkpoint, score), ...] of a Train result that are still on disk, best first."""
    listed = [(c, m[metric]) for c, m in (result.best_checkpoints or []) if metric in m]
    return rank_by_score([(c, score) for c, score in listed if checkpoint_exists(c.path)], mode)


def best_checkpoint(result, metric: str, mode: str):
    ranked = ranked_checkpoints(result, metric, mode)
    return ranked[0] if ranked else (None, None)


def prune_run_dir(filesystem, run_dir: str, keep_names: set[str]) -> None:
    """Delete every checkpoint_* directory of one finished Train run except those named in
    keep_names (after completing a publish that a killed trial left half done)."""
    import pyarrow.fs

    if isinstance(filesystem, pyarrow.fs.LocalFileSystem) and Path(run_dir).is_dir():
        finish_interrupted_publish(Path(run_dir))
        discard_rung_state(Path(run_dir))  # a trial stopped while paused at a rung
    for info in filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_") and info.base_name not in keep_names:
            try:
                filesystem.delete_dir(info.path)
            except (OSError, pyarrow.lib.ArrowException):
                pass


def prune_checkpoints(result, keep: int, metric: str, mode: str) -> None:
    """After a finished run, delete every checkpoint directory of the run but the `keep` best
    (with object-store storage Ray also keeps the latest, which its result may not list)."""
    import posixpath

    ranked = ranked_checkpoints(result, metric, mode)
    if ranked:
        paths = [posixpath.normpath(c.path) for c, _ in ranked]
        prune_run_dir(ranked[0][0].filesystem, posixpath.dirname(paths[0]), {posixpath.basename(p) for p in paths[:keep]})


def resolve_filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(Path(path).resolve().as_uri() if is_local(path) else path)


def _run_file(storage_path: str, run_name: str, file_name: str):
    return resolve_filesystem(f"{storage_path.rstrip('/')}/{run_name}/{file_name}")


def write_run_file(storage_path: str, run_name: str, file_name: str, text: str) -> None:
    """A small file next to a Train run's checkpoints (local, NFS or s3://); atomic on local disks."""
    if is_local(storage_path):
        atomic_write_text(Path(storage_path) / run_name / file_name, text)
        return
    fs, path = _run_file(storage_path, run_name, file_name)
    with fs.open_output_stream(path) as out:  # object stores publish a whole object at close
        out.write(text.encode("utf-8"))


def read_run_file(storage_path: str, run_name: str, file_name: str) -> str | None:
    import pyarrow.fs

    fs, path = _run_file(storage_path, run_name, file_name)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def last_reported_metrics(storage_path: str, run_name: str) -> dict | None:
    text = read_run_file(storage_uri(storage_path), run_name, LAST_REPORT)
    return json.loads(text) if text else None


def checkpoint_exists(path) -> bool:
    import pyarrow.fs

    if not isinstance(path, str) or not path:
        return False
    fs, root = resolve_filesystem(path)
    return fs.get_file_info(root).type == pyarrow.fs.FileType.Directory


def run_training(config: Config, address: str | None = None, log=print) -> dict:
    preflight(config)
    connect_ray(address, log=log)
    inputs = prepare_inputs(config, log=log)
    train = dataclasses.replace(config.train, metric=config.tune.metric, mode=config.tune.mode)
    log(f"training {config.model.name} on {len(inputs['splits']['train'])} papers "
        f"({inputs['prepared'].num_labels} categories), validating on {len(inputs['splits']['val'])}")
    started = time.time()
    run_name = f"train-{config.tune.study}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = build_trainer(train, inputs["loop_base"], name=run_name).fit()
    prune_checkpoints(result, train.checkpoint_keep, train.metric, train.mode)
    checkpoint, value = best_checkpoint(result, train.metric, train.mode)
    if checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint: {result.error}")
    output = export_model(checkpoint.path, train.output_dir)
    log(f"best {train.metric}={value:.4f}; model saved to {output} ({time.time() - started:.0f}s)")
    return {"model_dir": output, "metric": value, "metrics": last_reported_metrics(train.storage_path, run_name)}
