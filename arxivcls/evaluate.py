"""The evaluation and comparison stage: every model on the held-out test split, with Ray Data.

The test split is read here and nowhere before. Models: `default` (the study's default-configuration
trial), `tuned` (the best trial), `tuned+logit_adj` (post-hoc logit adjustment, Menon et al. 2021),
the TF-IDF `baseline`, and any extra `--model NAME=PATH`.
"""
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from arxivcls.errors import UserError
from arxivcls.files import atomic_directory

TAUS = np.round(np.arange(0.0, 2.01, 0.25), 2)


# ---------------------------------------------------------------- inference, shared by both paths

class Predictor:
    """Loads a saved classifier once; maps a batch of texts to class probabilities.

    Used as a Ray Data actor (map_batches) and directly by `predict` and the in-process loop.
    """

    def __init__(self, model_dir: str, max_length: int = 512, num_threads: int = 0, precision: str = "auto"):
        import torch

        from arxivcls.models import autocast_dtype, load_classifier, load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_classifier(model_dir).to(self.device).eval()
        self.tokenizer = load_tokenizer(model_dir)
        self.max_length = max_length
        self.amp_dtype = autocast_dtype(precision, self.device)  # training's rule: bf16 where the hardware has it

    def predict(self, texts: list[str]) -> np.ndarray:
        import torch

        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                                 padding="longest", return_tensors="pt")  # dynamic padding
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.model(input_ids=encoded["input_ids"].to(self.device),
                                attention_mask=encoded["attention_mask"].to(self.device)).logits
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def __call__(self, batch: dict) -> dict:
        return {"row": batch["row"], "probs": list(self.predict(batch["text"].tolist()))}


def length_sorted(texts: list[str]) -> np.ndarray:
    """Row order longest-first: batches of similar length pad little."""
    return np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")


def predict_in_process(model_dir: str, texts: list[str], max_length: int = 512, batch_size: int = 32,
                       precision: str = "auto") -> np.ndarray:
    predictor = Predictor(model_dir, max_length, precision=precision)
    order = length_sorted(texts)
    probs = None
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch_probs = predictor.predict([texts[i] for i in rows])
        probs = np.zeros((len(texts), batch_probs.shape[1]), dtype=np.float32) if probs is None else probs
        probs[rows] = batch_probs
    return probs


def default_num_actors(free: dict) -> int:
    """eval.num_actors = 0: one actor per free GPU, else one per free CPU, at most 4."""
    gpus = free.get("GPU", 0)
    return int(gpus) if gpus >= 1 else max(1, min(4, int(free.get("CPU", 1))))


def predict_with_ray_data(model_dir: str, texts: list[str], max_length: int = 512, batch_size: int = 32,
                          num_actors: int = 0, precision: str = "auto") -> np.ndarray:
    """Batch inference over an actor pool: one model copy per actor, GPUs when the cluster has them."""
    import ray

    free = ray.available_resources()
    gpus = free.get("GPU", 0)
    num_actors = num_actors or default_num_actors(free)
    order = length_sorted(texts)
    table = pd.DataFrame({"row": order, "text": [texts[i] for i in order]})
    # One block per batch keeps the length order intact and lets actors take batches as they free up.
    dataset = ray.data.from_pandas([table.iloc[s:s + batch_size] for s in range(0, len(table), batch_size)])
    predictions = dataset.map_batches(
        Predictor, fn_constructor_kwargs={"model_dir": model_dir, "max_length": max_length, "num_threads": 1 if gpus < 1 else 0,
                               "precision": precision},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_gpus=1 if gpus >= 1 else 0, num_cpus=1,
    ).to_pandas()
    probs = np.zeros((len(texts), len(predictions.probs.iloc[0])), dtype=np.float32)
    probs[predictions.row.to_numpy()] = np.stack(predictions.probs.to_numpy())
    return probs


# ---------------------------------------------------------------- logit adjustment

def logit_adjust(probs: np.ndarray, prior: np.ndarray, tau: float) -> np.ndarray:
    """softmax(log p - tau * log prior): shifts mass towards rare classes. tau=0 is the model itself."""
    if tau == 0:
        return probs
    logits = np.log(np.clip(probs, 1e-12, None)) - tau * np.log(np.clip(prior, 1e-12, None))
    logits -= logits.max(axis=1, keepdims=True)
    adjusted = np.exp(logits)
    return adjusted / adjusted.sum(axis=1, keepdims=True)


def choose_tau(val_probs: np.ndarray, val_labels: np.ndarray, prior: np.ndarray, metric: str = "macro_f1") -> float:
    from arxivcls.metrics import classification_metrics

    scores = {tau: classification_metrics(val_labels, logit_adjust(val_probs, prior, tau))[metric] for tau in TAUS}
    return float(max(scores, key=lambda tau: (scores[tau], -tau)))


# ---------------------------------------------------------------- the stage

def evaluate_study(results_dir, extra_models: dict | None = None, address: str | None = None, log=print) -> Path:
    from arxivcls import report
    from arxivcls.baseline import fit_baseline
    from arxivcls.data import load_prepared
    from arxivcls.metrics import classification_metrics, confusion_pairs, largest_differences, per_category_table, size_bin_table
    from arxivcls.train import connect_ray

    results_dir = Path(results_dir)
    study_file = results_dir / "study.json"
    if not study_file.is_file():
        raise UserError(f"{results_dir} holds no study.json: not a finished study's results directory")
    study = json.loads(study_file.read_text())
    prepared = load_prepared(study["prepared_data"])
    config = study["config"]
    max_length, batch_size = config["data"]["max_length"], config["eval"]["batch_size"]
    precision = config["train"].get("precision", "auto")  # inference in the precision the models trained in
    models = dict(study["models"])
    for name, path in (extra_models or {}).items():
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"--model {name}={path}: not a saved model directory")
        models[name] = path
    connect_ray(address, log=log)

    test = prepared.load_split("test")  # first and only read of the test split
    labels = test.label.to_numpy()
    label_names = [prepared.id2label[i] for i in range(prepared.num_labels)]
    texts = test.text.tolist()
    probs, seconds = {}, {}
    for name, model_dir in models.items():
        started = time.perf_counter()
        probs[name] = predict_with_ray_data(model_dir, texts, max_length, batch_size, config["eval"]["num_actors"], precision)
        seconds[name] = time.perf_counter() - started
        log(f"evaluated {name} on {len(texts)} test papers in {seconds[name]:.1f}s")

    tau = None
    if config["eval"].get("logit_adjust", True) and "tuned" in models:
        val = prepared.load_split("val")
        val_probs = predict_with_ray_data(models["tuned"], val.text.tolist(), max_length, batch_size,
                                          config["eval"]["num_actors"], precision)
        counts = np.array([prepared.train_counts[c] for c in label_names], dtype=np.float64)
        prior = counts / counts.sum()
        tau = choose_tau(val_probs, val.label.to_numpy(), prior)
        probs["tuned+logit_adj"] = logit_adjust(probs["tuned"], prior, tau)
        log(f"logit adjustment: tau={tau} chosen on validation macro F1")

    baseline_seconds = None
    if config["eval"].get("baseline", True):
        train = prepared.load_split("train")
        baseline = fit_baseline(train.text.tolist(), train.label.to_numpy(), prepared.num_labels, seed=config["data"]["seed"])
        started = time.perf_counter()
        probs["baseline"] = baseline.predict_proba(texts)
        seconds["baseline"] = time.perf_counter() - started
        baseline_seconds = baseline.fit_seconds
        log(f"baseline (TF-IDF + linear) fitted in {baseline.fit_seconds:.1f}s")

    top_k = config["eval"]["top_k"]
    comparison = pd.DataFrame({name: classification_metrics(labels, p, top_k=top_k) for name, p in probs.items()}).T
    comparison.index.name = "model"
    predicted = {name: p.argmax(axis=1) for name, p in probs.items()}
    per_category = per_category_table(labels, predicted, label_names, prepared.train_counts)
    size_bins = size_bin_table(labels, predicted, label_names, prepared.train_counts)
    focus = "tuned" if "tuned" in predicted else next(iter(predicted))
    pairs = confusion_pairs(labels, predicted[focus], label_names)
    differences = (largest_differences(per_category, focus, "baseline") if "baseline" in predicted and focus != "baseline"
                   else pd.DataFrame())
    predictions = pd.DataFrame({"id": test.id, "true": test.category})
    for name, p in probs.items():
        predictions[f"{name}_pred"] = [label_names[i] for i in predicted[name]]
        predictions[f"{name}_confidence"] = p.max(axis=1)

    trials = pd.read_csv(results_dir / "trials.csv") if (results_dir / "trials.csv").is_file() else pd.DataFrame()
    history = pd.read_csv(results_dir / "history.csv") if (results_dir / "history.csv").is_file() else pd.DataFrame()
    evaluation = {"test_papers": len(texts), "inference_seconds": seconds, "logit_adjust_tau": tau,
                  "baseline_fit_seconds": baseline_seconds, "models": models}
    with atomic_directory(results_dir) as staging:
        for name in ("study.json", "trials.csv", "history.csv"):
            if (results_dir / name).is_file():
                (staging / name).write_bytes((results_dir / name).read_bytes())
        report.write_tables(staging, {"comparison": comparison, "categories": per_category, "size_bins": size_bins,
                                      "confusion_pairs": pairs, "differences": differences})
        predictions.to_parquet(staging / "predictions.parquet", index=False)
        (staging / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
        model_names = list(probs)
        metric = config["tune"]["metric"]
        param_columns = [c for c in trials.columns if c.startswith("p_")]
        plots = {
            "size_bins": report.plot_size_bins(staging, size_bins, model_names),
            "category_f1": report.plot_category_f1(staging, per_category, model_names),
            "confusion_pairs": report.plot_confusion_pairs(staging, pairs, focus),
            "learning_curves": report.plot_learning_curves(staging, history, metric) if not history.empty else None,
            "param_importance": (report.plot_param_importance(staging, trials.rename(columns={"best_metric": metric}), param_columns, metric, config["tune"]["mode"])
                                 if not trials.empty else None),
        }
        report.write_report_md(staging, {
            "study_name": study.get("study", results_dir.name), "comparison": comparison, "size_bins": size_bins,
            "per_category": per_category, "confusion_pairs": pairs, "differences": differences, "plots": plots,
            "study": {**study, "inference_seconds": seconds, "logit_adjust_tau": tau}, "baseline_fit_seconds": baseline_seconds,
        })
    log(f"results written to {results_dir}/ (report.md, comparison.csv, ...)")
    log(comparison[["accuracy", "macro_f1", "weighted_f1", f"top{top_k}_accuracy"]].round(4).to_string())
    return results_dir
