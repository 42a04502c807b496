"""What a model reads of each paper: a transformer, its tokenizer's first max_length tokens; a TF-IDF
baseline, every word. Measured per model for the comparison table, and the transformer's text
(truncated, decoded) for the baseline refitted on it.
"""
import re

import numpy as np

WORD = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token_pattern


def transformer_read(tokenizer, texts: list[str], max_length: int) -> tuple[list[str], dict]:
    """(the text the transformer reads of each paper, decoded from its truncated tokens; per paper:
    tokens and characters read, and whether it was cut short)."""
    texts = list(texts)
    full = tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]
    kept = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length,
                     return_offsets_mapping=tokenizer.is_fast)
    read = tokenizer.batch_decode(kept["input_ids"], skip_special_tokens=True, clean_up_tokenization_spaces=True)
    if tokenizer.is_fast:  # characters of the paper's own text up to the end of the last token read
        chars = [max((end for _, end in offsets), default=0) for offsets in kept["offset_mapping"]]
    else:  # the decoded text (which the tokenizer may lowercase and respace)
        chars = [len(t) for t in read]
    return read, {"tokens": np.array([len(k) for k in kept["input_ids"]], dtype=np.float64),
                  "chars": np.array(chars, dtype=np.float64), "cut": np.array([len(f) > max_length for f in full], dtype=np.float64)}


def words_read(texts: list[str]) -> dict:
    """Per paper: the words and characters a TF-IDF baseline reads (all of them)."""
    return {"tokens": np.array([len(WORD.findall(t)) for t in texts], dtype=np.float64),
            "chars": np.array([len(t) for t in texts], dtype=np.float64), "cut": np.zeros(len(texts))}


def summary(per_paper: dict, unit: str, max_length: int | None = None) -> dict:
    """Means over papers: read_tokens (in `unit`), read_chars, read_truncated (the share cut short)."""
    reading = {"read_tokens": float(per_paper["tokens"].mean()), "read_chars": float(per_paper["chars"].mean()),
               "read_truncated": float(per_paper["cut"].mean()), "read_unit": unit}
    return reading if max_length is None else {**reading, "max_length": int(max_length)}


def transformer_reading(tokenizer, texts: list[str], max_length: int) -> tuple[list[str], dict]:
    """(the text the transformer reads of each paper; what it read: tokens and characters per paper,
    mean, and the share of papers cut short)."""
    read, per_paper = transformer_read(tokenizer, texts, max_length)
    return read, summary(per_paper, "tokens", max_length)


def baseline_reading(texts: list[str], truncated_share: float = 0.0) -> dict:
    """A TF-IDF baseline reads every word of the text it is given."""
    return {**summary(words_read(texts), "words"), "read_truncated": truncated_share}


def reading_text(reading: dict) -> str:
    """'93.4 tokens, 534 chars; 95% cut at 96 tokens' — the report's column."""
    if not reading:
        return "n/a"
    if "parts" in reading:  # an ensemble reads what each of its models reads
        return " + ".join(f"{reading_text(part)} ({name})" for name, part in reading["parts"].items())
    text = f"{reading['read_tokens']:.1f} {reading['read_unit']}, {reading['read_chars']:.0f} chars"
    if reading.get("read_truncated"):
        cut_at = f" at {reading['max_length']} tokens" if "max_length" in reading else ""
        text += f"; {reading['read_truncated']:.0%} cut{cut_at}"
    return text
