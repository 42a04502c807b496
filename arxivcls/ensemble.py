"""The tuned transformer + the TF-IDF baseline: their log-probabilities mixed with one weight,
chosen on the validation split. Saved as a small directory that `predict` loads like a model.
"""
import json
from pathlib import Path

import numpy as np

from arxivcls.errors import UserError

WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 2)  # the transformer's share; 0 = the baseline alone
ENSEMBLE_FILE = "ensemble.json"


def mix(transformer_probs: np.ndarray, baseline_probs: np.ndarray, weight: float) -> np.ndarray:
    """softmax(weight * log p_transformer + (1 - weight) * log p_baseline)."""
    logits = weight * np.log(np.clip(transformer_probs, 1e-12, None)) + (1 - weight) * np.log(np.clip(baseline_probs, 1e-12, None))
    logits -= logits.max(axis=1, keepdims=True)
    mixed = np.exp(logits)
    return mixed / mixed.sum(axis=1, keepdims=True)


def choose_weight(val_transformer: np.ndarray, val_baseline: np.ndarray, val_labels: np.ndarray,
                  metric: str = "macro_f1") -> float:
    """The weight with the best validation score; ties go to the weight nearest an even mix."""
    from arxivcls.metrics import classification_metrics

    score = {w: classification_metrics(val_labels, mix(val_transformer, val_baseline, w))[metric] for w in WEIGHTS}
    return float(max(WEIGHTS, key=lambda w: (score[w], -abs(w - 0.5))))


def save_ensemble(directory, transformer_dir, baseline_dir, weight: float, max_length: int, precision: str) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {"transformer": _relative(transformer_dir, directory), "baseline": _relative(baseline_dir, directory),
            "weight": weight, "max_length": max_length, "precision": precision}
    (directory / ENSEMBLE_FILE).write_text(json.dumps(spec, indent=1))
    return directory


def _relative(path, start: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), start.resolve())


def load_model(model_dir, max_length: int | None = None, precision: str = "auto", num_threads: int = 0,
               transformer=None):
    """(texts -> probabilities, id2label, settings) for a transformer, a saved baseline or an
    ensemble directory, loaded here, once. `transformer(directory, max_length, precision)` loads
    a transformer's triple (default: load_transformer with `num_threads`)."""
    from arxivcls.baseline import load_baseline

    directory = Path(model_dir)
    transformer = transformer or (lambda path, length, dtype: load_transformer(path, length, dtype, num_threads))
    if (directory / ENSEMBLE_FILE).is_file():
        spec = json.loads((directory / ENSEMBLE_FILE).read_text())
        predict, labels, settings = transformer(directory / spec["transformer"], spec["max_length"], spec["precision"])
        baseline, baseline_labels, _ = load_model(directory / spec["baseline"])
        if labels != baseline_labels:
            raise UserError(f"{model_dir}: the transformer and the baseline were trained on different categories")
        return (lambda texts: mix(predict(texts), baseline(texts), spec["weight"])), labels, \
            {**settings, "kind": "ensemble", "weight": spec["weight"]}
    if (directory / "vectorizer.json").is_file():
        baseline, names = load_baseline(directory)
        return baseline.predict_proba, dict(enumerate(names)), {"kind": "baseline"}
    return transformer(directory, max_length, precision)


def load_transformer(directory, max_length: int | None = None, precision: str = "auto", num_threads: int = 0,
                     batch_size: int = 32):
    """(texts -> probabilities, id2label, settings) of a saved transformer, inferred in length-sorted batches."""
    from arxivcls.evaluate import Predictor, predict_sorted

    directory = Path(directory)
    config, id2label = read_model_config(directory)
    length = inference_max_length(directory, config, max_length)
    predictor = Predictor(str(directory), length, num_threads=num_threads, precision=precision)
    dtype = predictor.amp_dtype
    return (lambda texts: predict_sorted(predictor, texts, batch_size)), id2label, \
        {"kind": "transformer", "max_length": length, "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch.")}


def read_model_config(directory: Path):
    """(config, id2label) of a saved transformer, or a UserError naming what is wrong."""
    from transformers import AutoConfig

    if not (directory / "config.json").is_file():
        raise UserError(f"--model {directory}: not a saved model directory (no config.json, vectorizer.json or ensemble.json)")
    try:
        config = AutoConfig.from_pretrained(directory, trust_remote_code=False)
    except (ValueError, OSError) as e:
        raise UserError(f"--model {directory}: config.json is not a usable model config ({str(e).splitlines()[0][:160]})")
    return config, {int(i): c for i, c in config.id2label.items()}


def trained_max_length(directory: Path) -> int | None:
    """The max_length a model was trained and evaluated at, as arxivcls saves it with the tokenizer."""
    config = directory / "tokenizer_config.json"
    length = json.loads(config.read_text()).get("model_max_length") if config.is_file() else None
    return int(length) if isinstance(length, (int, float)) and 0 < length <= 8192 else None


def inference_max_length(directory: Path, config, max_length: int | None = None) -> int:
    """Where predict truncates: the given length, else the one the model was trained at, else its positions (<= 512)."""
    return max_length or trained_max_length(directory) or min(512, getattr(config, "max_position_embeddings", 512))
