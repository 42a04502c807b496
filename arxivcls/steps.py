"""One training step and one batched inference pass: the compute of a trial, free of Ray and Optuna,
so the worker loop (arxivcls.train) and the GPU check (benchmarks.gpu_check) run the same code."""
import numpy as np
import torch

from arxivcls.features import TokenizedSplit, collate, sorted_batches


def class_weights(train_labels: np.ndarray, num_labels: int) -> torch.Tensor:
    """Inverse square-root frequency, mean 1 over the classes present: a softer push than 1/n."""
    counts = np.bincount(train_labels, minlength=num_labels).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    weights *= (counts > 0).sum() / weights.sum()
    return torch.tensor(weights, dtype=torch.float32)


def make_optimizer(model, learning_rate: float, weight_decay: float, device: torch.device):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 else decay).append(param)  # no decay on biases and LayerNorm
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel on CPU too (docs/design.md, Training); HF's Trainer defaults to it since torch 2.8.
    return torch.optim.AdamW(groups, lr=learning_rate, fused=device.type in ("cuda", "cpu"))


def forward_backward(model, batch: dict, loss_fn, amp_dtype, scaler, grad_accum_steps: int = 1) -> float:
    """Forward under autocast (bf16/fp16 matmuls, fp32 weights), loss in fp32, backward. Returns the loss."""
    device_type = batch["input_ids"].device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = loss_fn(logits.float(), batch["labels"])
    scaler.scale(loss / grad_accum_steps).backward()
    return loss.item()


def optimizer_step(model, optimizer, scheduler, scaler, max_grad_norm: float = 1.0) -> None:
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


def batch_to(split: TokenizedSplit, rows: np.ndarray, device: torch.device) -> dict:
    """Rows of a split as one batch padded to its longest row (a multiple of 8 on CUDA: tensor cores)."""
    pad_multiple = 8 if device.type == "cuda" else 1
    return {k: v.to(device, non_blocking=True) for k, v in collate(split, rows, pad_to_multiple=pad_multiple).items()}


@torch.inference_mode()
def predict_proba(model, split: TokenizedSplit, rows: np.ndarray, batch_size: int, device, amp_dtype=None):
    """Class probabilities and summed loss for `rows`, in the order of `rows` (length-sorted batches)."""
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
