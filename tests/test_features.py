import numpy as np
import torch

from arxivcls.config import DataConfig
from arxivcls.data import prepare
from arxivcls.features import TokenizedSplit, collate, length_grouped_batches, sorted_batches, tokenize_split
from arxivcls.models import load_classifier, load_tokenizer


def test_length_grouping_covers_every_row_once_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 512, size=1003)
    for world_size in (1, 3):
        seen = np.concatenate([np.concatenate(length_grouped_batches(lengths, 16, seed=1, epoch=2, rank=r, world_size=world_size))
                               for r in range(world_size)])
        assert sorted(seen.tolist()) == list(range(len(lengths)))
    batches = length_grouped_batches(lengths, 16, seed=1, epoch=0)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(rng.permutation(len(lengths)), len(batches))
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert lengths.sum() / padded > 0.95 > lengths.sum() / padded_random
    assert [b.tolist() for b in length_grouped_batches(lengths, 16, 1, 0)] != [b.tolist() for b in length_grouped_batches(lengths, 16, 1, 1)]


def test_sorted_batches_cover_rows():
    lengths = np.array([3, 9, 1, 7, 5])
    batches = sorted_batches(lengths, 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


def test_dynamic_padding_matches_unpadded_logits(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    model = load_classifier(str(tiny_bert), {0: "a", 1: "b", 2: "c"}).eval()
    texts = ["short text", "a much longer text about quantum fields and partial differential equations " * 3, "mid length text here"]
    split = TokenizedSplit.from_lists(tokenizer(texts)["input_ids"], [0, 1, 2])
    batch = collate(split, np.arange(3), pad_to_multiple=8)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["attention_mask"].sum(1).tolist() == split.lengths.tolist()
    with torch.no_grad():
        batched = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for i in range(3):
            ids = torch.tensor(split.row(i), dtype=torch.long)[None]
            single = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            torch.testing.assert_close(batched[i], single[0], atol=1e-5, rtol=1e-4)


def test_tokenize_once_then_cache(papers_file, tiny_bert, tmp_path):
    prepared = prepare(DataConfig(path=str(papers_file), cache_dir=str(tmp_path)), log=lambda *_: None)
    tokenizer = load_tokenizer(str(tiny_bert))
    stats = {"tokenized": 0, "cache_hits": 0}
    # 256: the tiny BERT's word-level vocabulary spells rare words letter by letter, so most
    # papers run past it (70-627 tokens) and some stay below
    first = tokenize_split(prepared, "train", tokenizer, 256, str(tmp_path), log=lambda *_: None, stats=stats)
    second = tokenize_split(prepared, "train", tokenizer, 256, str(tmp_path), log=lambda *_: None, stats=stats)
    assert stats == {"tokenized": 1, "cache_hits": 1}
    assert np.array_equal(first.ids, second.ids) and np.array_equal(first.labels, second.labels)
    assert first.lengths.max() == 256 and len(first) == len(prepared.load_split("train"))  # truncated, not padded
    assert first.lengths.min() < 256
