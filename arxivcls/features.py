"""Tokenize once (cached, unpadded), group batches by length, pad each batch only to its longest row."""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from arxivcls.files import atomic_path


@dataclass
class TokenizedSplit:
    """Ragged token ids stored flat: row i is ids[offsets[i]:offsets[i+1]]. Cheap to ray.put and share."""
    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len = rows + 1
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @classmethod
    def from_lists(cls, token_lists, labels) -> "TokenizedSplit":
        lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.fromiter((t for row in token_lists for t in row), dtype=np.int32, count=int(offsets[-1]))
        return cls(ids, offsets, np.asarray(labels, dtype=np.int64))


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return hashlib.sha256(f"{type(tokenizer).__name__}:{tokenizer.do_lower_case if hasattr(tokenizer, 'do_lower_case') else ''}:{vocab}".encode()).hexdigest()[:12]


def tokenize_texts(tokenizer, texts: list[str], max_length: int, chunk: int = 2048) -> list[list[int]]:
    token_lists: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        encoded = tokenizer(texts[start:start + chunk], truncation=True, max_length=max_length, padding=False)
        token_lists.extend(encoded["input_ids"])
    return token_lists


def tokenize_split(prepared, split: str, tokenizer, max_length: int, cache_dir: str, log=print, stats=None) -> TokenizedSplit:
    """Tokenize a prepared split once per (split data, tokenizer, max_length); later calls read the cache."""
    key = f"{prepared.key}-{split}-{tokenizer_fingerprint(tokenizer)}-{max_length}"
    path = Path(cache_dir).expanduser() / "tokenized" / f"{key}.parquet"
    if path.is_file():
        table = pq.read_table(path)
        log(f"tokenized {split}: cache hit {path.name}")
        if stats is not None:
            stats["cache_hits"] += 1
    else:
        df = prepared.load_split(split)
        token_lists = tokenize_texts(tokenizer, df.text.tolist(), max_length)
        table = pa.table({"input_ids": pa.array(token_lists, type=pa.list_(pa.int32())), "label": df.label.to_numpy()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        log(f"tokenized {split}: {len(df)} papers -> {path.name}")
        if stats is not None:
            stats["tokenized"] += 1
    ids_column = table.column("input_ids").combine_chunks()
    return TokenizedSplit(
        ids=ids_column.values.to_numpy(zero_copy_only=False).astype(np.int32),
        offsets=ids_column.offsets.to_numpy().astype(np.int64),
        labels=table.column("label").to_numpy().astype(np.int64),
    )


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                           rank: int = 0, world_size: int = 1, megabatch_factor: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar-length rows (each row exactly once per epoch across all ranks).

    Shuffle, cut into megabatches of megabatch_factor * batch_size rows, sort each by length and
    chunk into batches, then shuffle the batch order: little padding, still random. With several
    workers each rank takes every world_size-th batch.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    megabatch = batch_size * megabatch_factor
    batches = []
    for start in range(0, len(order), megabatch):
        chunk = order[start:start + megabatch]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches[rank::world_size]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """For inference: longest first, so padding is minimal and memory peaks early."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(split: TokenizedSplit, rows: np.ndarray, pad_id: int = 0, pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad only to the longest row of this batch (rounded up to pad_to_multiple for tensor cores)."""
    lengths = split.lengths[rows]
    width = int(lengths.max())
    width = -(-width // pad_to_multiple) * pad_to_multiple
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, (i, n) in enumerate(zip(rows, lengths)):
        input_ids[j, :n] = split.row(i)
        attention_mask[j, :n] = 1
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "labels": torch.from_numpy(split.labels[rows]),
    }


def truncate_split(split: TokenizedSplit, max_length: int) -> TokenizedSplit:
    """Each row cut to `max_length` tokens as the tokenizer truncates: its first max_length - 1 tokens
    and its last (the end-of-sequence token). Rows already short enough are left as they are."""
    lengths = split.lengths
    if lengths.size == 0 or lengths.max() <= max_length:
        return split
    keep = np.ones(len(split.ids), dtype=bool)
    for i in np.flatnonzero(lengths > max_length):
        keep[split.offsets[i] + max_length - 1:split.offsets[i + 1] - 1] = False
    new_lengths = np.minimum(lengths, max_length)
    offsets = np.concatenate([[0], np.cumsum(new_lengths)]).astype(np.int64)
    return TokenizedSplit(split.ids[keep], offsets, split.labels)
