"""The evaluation and comparison stage: every model on the held-out test split, with Ray Data.

The test split is read here and nowhere before. Models: `default` (the study's default-configuration
trial), `tuned` (the best trial), `tuned+logit_adj` (post-hoc logit adjustment, Menon et al. 2021),
the TF-IDF `baseline` (tuned by its own study on validation, arxivcls.baseline_search),
`baseline_truncated` (that baseline refitted on the text the tuned transformer reads: the control
that separates the model from the text), `ensemble` (tuned + baseline, arxivcls.ensemble), and any
extra `--model NAME=PATH`. Every metric gets a bootstrap interval and every comparison a paired one
(arxivcls.stats); every model's row says what it read of each paper (arxivcls.reading).
"""
import dataclasses
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
    return predict_sorted(Predictor(model_dir, max_length, precision=precision), texts, batch_size)


def predict_sorted(predictor: "Predictor", texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Probabilities for `texts` in their order, inferred in length-sorted batches."""
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

CONTROL = "baseline_truncated"  # the tuned baseline on the tuned transformer's text
PAIRS = [("tuned", "default"), ("tuned", "baseline"), ("tuned", CONTROL), (CONTROL, "baseline"), ("ensemble", "baseline"),
         ("ensemble", "tuned"), ("tuned+logit_adj", "tuned")]
IDENTICAL_BECAUSE = {"default": "the default trial won", "tuned+logit_adj": "validation chose tau 0 (no adjustment)",
                     "ensemble": "validation gave one model all the weight"}


@dataclasses.dataclass
class Inference:
    """How the study's models are run: as they were trained and validated."""
    max_length: int
    batch_size: int
    num_actors: int
    precision: str

    def length(self, model_dir: str) -> int:
        """Where a model truncates: the length it was trained at (saved with its tokenizer), else data.max_length."""
        from arxivcls.ensemble import trained_max_length

        return trained_max_length(Path(model_dir)) or self.max_length

    def predict(self, model_dir: str, texts: list[str]) -> np.ndarray:
        return predict_with_ray_data(model_dir, texts, self.length(model_dir), self.batch_size, self.num_actors, self.precision)


def read_study(results_dir: Path, extra_models: dict | None) -> tuple[dict, dict]:
    """study.json and the models to compare (the study's and any --model NAME=PATH)."""
    study_file = results_dir / "study.json"
    if not study_file.is_file():
        raise UserError(f"{results_dir} holds no study.json: not a finished study's results directory")
    study = json.loads(study_file.read_text())
    models = dict(study["models"])
    for name, path in (extra_models or {}).items():
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"--model {name}={path}: not a saved model directory")
        models[name] = path
    for name, path in models.items():
        if not (Path(path) / "config.json").is_file():
            raise UserError(f"model '{name}' of this study is missing at {path}: run the study (arxivcls tune) on this machine first")
    if study.get("best_trial", {}).get("trial_id") == study.get("default_trial", {}).get("trial_id"):
        models.pop("default", None)  # the same checkpoint: predicted once, reported as tuned
    return study, models


def predict_models(models: dict, texts: list[str], inference: Inference, log) -> tuple[dict, dict]:
    probs, seconds = {}, {}
    for name, model_dir in models.items():
        started = time.perf_counter()
        probs[name] = inference.predict(model_dir, texts)
        seconds[name] = time.perf_counter() - started
        log(f"evaluated {name} on {len(texts)} test papers in {seconds[name]:.1f}s")
    return probs, seconds


def add_derived_models(probs: dict, seconds: dict, prepared, study: dict, inference: Inference, test_texts: list[str],
                       log, baseline_search=None) -> tuple[dict, dict]:
    """tuned+logit_adj, baseline, baseline_truncated and ensemble, each tuned on validation: what was
    chosen and saved, and the baseline's tables (its trials). `baseline_search`: the baseline's
    study if it already ran (arxivcls.baseline_search.search_study_baseline), else it runs here."""
    from arxivcls.baseline import fit_baseline
    from arxivcls.baseline_search import search_study_baseline
    from arxivcls.ensemble import choose_weight, mix, save_ensemble

    eval_cfg, val = study["config"]["eval"], prepared.load_split("val")
    label_names = [prepared.id2label[i] for i in range(prepared.num_labels)]
    val_tuned = inference.predict(study["models"]["tuned"], val.text.tolist()) if "tuned" in probs else None
    chosen = {}
    if val_tuned is not None and eval_cfg.get("logit_adjust", True):
        counts = np.array([prepared.train_counts[c] for c in label_names], dtype=np.float64)
        prior = counts / counts.sum()
        chosen["logit_adjust_tau"] = choose_tau(val_tuned, val.label.to_numpy(), prior)
        probs["tuned+logit_adj"] = logit_adjust(probs["tuned"], prior, chosen["logit_adjust_tau"])
    if not eval_cfg.get("baseline", True):
        return chosen, {}
    train = prepared.load_split("train")
    search = baseline_search or search_study_baseline(prepared, study["config"], log)
    baseline = fit_baseline(train.text.tolist(), train.label.to_numpy(), prepared.num_labels, study["config"]["data"]["seed"],
                            search.best, calibration=(val.text.tolist(), val.label.to_numpy()))
    started = time.perf_counter()
    probs["baseline"] = baseline.predict_proba(test_texts)
    seconds["baseline"] = time.perf_counter() - started
    chosen.update(baseline_fit_seconds=baseline.fit_seconds, baseline_search_seconds=round(search.seconds, 2),
                  baseline_trials=len(search.trials), baseline_params=dataclasses.asdict(baseline.params))
    models_dir = Path(study["models"]["tuned"]).parent
    with atomic_directory(models_dir / "baseline") as staging:
        baseline.save(staging, label_names)
    if "tuned" in probs:
        probs[CONTROL], chosen["control"] = truncated_control(baseline.params, study["models"]["tuned"],
                                                              inference.length(study["models"]["tuned"]), train, val,
                                                              test_texts, prepared.num_labels, study["config"]["data"]["seed"])
        log(f"{CONTROL}: the tuned baseline refitted on the tuned transformer's text "
            f"(its first {chosen['control']['max_length']} tokens, decoded)")
    if val_tuned is not None:
        weight = choose_weight(val_tuned, baseline.predict_proba(val.text.tolist()), val.label.to_numpy())
        probs["ensemble"] = mix(probs["tuned"], probs["baseline"], weight)
        with atomic_directory(models_dir / "ensemble") as staging:
            save_ensemble(staging, models_dir / "tuned", models_dir / "baseline", weight,
                          inference.length(study["models"]["tuned"]), inference.precision)
        chosen.update(ensemble_weight=weight, ensemble_dir=str(models_dir / "ensemble"))
        log(f"ensemble: transformer weight {weight} chosen on validation macro F1 (test papers: {len(test_texts)})")
    return chosen, {"baseline_trials": search.trials}


def truncated_control(params, tokenizer_dir: str, max_length: int, train: pd.DataFrame, val: pd.DataFrame,
                      test_texts: list[str], num_classes: int, seed: int) -> tuple[np.ndarray, dict]:
    """The tuned baseline's settings fitted, calibrated and tested on exactly the text the transformer
    reads of each paper: its tokenizer's first max_length tokens, decoded. (test probabilities, facts)"""
    from arxivcls.baseline import fit_baseline
    from arxivcls.models import load_tokenizer
    from arxivcls.reading import transformer_reading

    tokenizer = load_tokenizer(tokenizer_dir)
    read = {name: transformer_reading(tokenizer, texts, max_length)[0]
            for name, texts in (("train", train.text.tolist()), ("val", val.text.tolist()), ("test", list(test_texts)))}
    control = fit_baseline(read["train"], train.label.to_numpy(), num_classes, seed, params,
                           calibration=(read["val"], val.label.to_numpy()))
    return control.predict_proba(read["test"]), {"name": CONTROL, "tokenizer": str(tokenizer_dir), "max_length": max_length,
                                                 "fit_seconds": control.fit_seconds}


def model_readings(models: dict, probs: dict, test_texts: list[str], inference: Inference) -> dict:
    """model -> what it read of each test paper (arxivcls.reading)."""
    from arxivcls.models import load_tokenizer
    from arxivcls.reading import baseline_reading, transformer_reading

    readings, read_texts = {}, {}
    for name, model_dir in models.items():
        read_texts[name], readings[name] = transformer_reading(load_tokenizer(model_dir), test_texts, inference.length(model_dir))
    if "tuned+logit_adj" in probs:
        readings["tuned+logit_adj"] = readings["tuned"]
    if "baseline" in probs:
        readings["baseline"] = baseline_reading(test_texts)
    if CONTROL in probs:
        tuned = readings["tuned"]
        readings[CONTROL] = {**baseline_reading(read_texts["tuned"], tuned["read_truncated"]),
                             "read_chars": tuned["read_chars"], "max_length": tuned["max_length"]}
    if "ensemble" in probs:
        readings["ensemble"] = {"parts": {"tuned": readings["tuned"], "baseline": readings["baseline"]}}
    return readings


def identical_models(probs: dict) -> dict:
    """copy -> (original, why) for every model whose predictions equal an earlier model's; copies are dropped."""
    identical, names = {}, list(probs)
    for i, name in enumerate(names):
        original = next((other for other in names[:i] if other not in identical and np.array_equal(probs[other], probs[name])), None)
        if original is not None:
            identical[name] = (original, IDENTICAL_BECAUSE.get(name, "the same predictions"))
    for name in identical:
        probs.pop(name)
    return identical


def compare(probs: dict, test: pd.DataFrame, label_names: list[str], train_counts: dict | None, top_k: int, seed: int,
            pairs: list[tuple[str, str]] | None = None) -> dict:
    """Point metrics (exact, cross-list and archive accuracy among them), bootstrap intervals,
    paired differences and the per-category tables. `test.label` indexes `label_names`; without
    `train_counts` (models from elsewhere) the tables by training-set size are left out."""
    from arxivcls import stats
    from arxivcls.metrics import (arxiv_hits, classification_metrics, confusion_pairs, largest_differences, per_category_table,
                                  size_bin_table)

    labels = test.label.to_numpy()
    listed = test["categories"] if "categories" in test else test.category
    predicted = {name: p.argmax(axis=1) for name, p in probs.items()}
    hits = {name: arxiv_hits([label_names[i] for i in pred], test.category.tolist(), listed.tolist())
            for name, pred in predicted.items()}
    papers = {name: stats.point_metrics(labels, p, top_k, hits=hits[name]) for name, p in probs.items()}
    points = {name: stats.scores(paper) for name, paper in papers.items()}
    comparison = pd.DataFrame({name: {**classification_metrics(labels, p, top_k=top_k), **points[name]}
                               for name, p in probs.items()}).T
    comparison.index.name = "model"
    samples = stats.bootstrap(papers, seed=seed)
    per_category = per_category_table(labels, predicted, label_names, train_counts or {})
    if train_counts is None:
        per_category = (per_category.drop(columns=["train_count", "size_bin"])
                        .sort_values(["support", "category"], ascending=[False, True]).reset_index(drop=True))
    for name, model_hits in hits.items():
        for kind, hit in model_hits.items():
            per_paper = pd.Series(hit, index=test.category.to_numpy()).groupby(level=0).mean()
            per_category[f"{name}_{kind}_accuracy"] = per_category.category.map(per_paper)
    focus = "tuned" if "tuned" in predicted else next(iter(predicted))
    pairs = [p for p in (PAIRS if pairs is None else pairs) if set(p) <= set(probs)]
    confusions = confusion_pairs(labels, predicted[focus], label_names)
    wrong = pd.DataFrame({"true": test.category.to_numpy(), "predicted": [label_names[i] for i in predicted[focus]],
                          "cross_listed": hits[focus]["crosslist"]})
    listed_counts = wrong[wrong.true != wrong.predicted].groupby(["true", "predicted"]).cross_listed.sum()
    confusions["cross_listed"] = [int(listed_counts.get((t, p), 0)) for t, p in zip(confusions.true, confusions.predicted)]
    return {"comparison": comparison, "intervals": stats.intervals(samples),
            "differences": stats.paired_differences(samples, points, pairs, ["accuracy", "macro_f1", "crosslist_accuracy"]),
            "categories": per_category,
            "size_bins": (size_bin_table(labels, predicted, label_names, train_counts) if train_counts is not None
                          else pd.DataFrame()),
            "confusion_pairs": confusions,
            "category_differences": (largest_differences(per_category, focus, "baseline")
                                     if "baseline" in predicted and focus != "baseline" else pd.DataFrame()),
            "predicted": predicted, "focus": focus, "label_names": label_names}


def draw_plots(out_dir: Path, tables: dict, probs: dict, labels: np.ndarray, trials: pd.DataFrame,
               history: pd.DataFrame, tune_cfg: dict, optuna_storage: str | None = None) -> tuple[dict, dict]:
    from arxivcls import plots

    models, focus, metric = list(probs), tables["focus"], tune_cfg["metric"]
    calibration = {m: (probs[m].max(axis=1), tables["predicted"][m] == labels) for m in ("tuned", "baseline", "ensemble") if m in probs}
    drawn = {
        "optimization_history": plots.plot_optimization_history(out_dir, trials, metric, tune_cfg["mode"]),
        "learning_curves": plots.plot_learning_curves(out_dir, history, metric),
        "confusion_matrix": plots.plot_confusion_heatmap(out_dir, labels, tables["predicted"][focus], tables["label_names"], focus),
        "reliability": plots.plot_reliability(out_dir, calibration),
        "confusion_pairs": plots.plot_confusion_pairs(out_dir, tables["confusion_pairs"], focus),
        "size_bins": plots.plot_size_bins(out_dir, tables["size_bins"], models),
        "category_f1": plots.plot_category_f1(out_dir, tables["categories"], models),
    }
    absent = {}
    why = plots.importance_absent_reason(trials)
    if why:
        absent["param_importance"] = why
    else:
        params = [c for c in trials.columns if c.startswith("p_")]
        drawn["param_importance"] = plots.plot_param_importance(
            out_dir, trials.rename(columns={"best_metric": metric}), params, metric, tune_cfg["mode"],
            optuna_study=plots.stored_study(optuna_storage, tune_cfg["study"]))
    return drawn, absent


def with_readings(comparison: pd.DataFrame, readings: dict) -> pd.DataFrame:
    """The comparison with what each model read: read_tokens (its own unit: read_unit), read_chars
    (per paper, mean), read_truncated (share of papers cut short); an ensemble's parts are in the report."""
    columns = ["read_tokens", "read_unit", "read_chars", "read_truncated"]
    unit = lambda reading: "parts" if "parts" in reading else reading.get("read_unit", "")
    table = pd.DataFrame({name: {c: unit(readings.get(name, {})) if c == "read_unit" else readings.get(name, {}).get(c, np.nan)
                                 for c in columns} for name in comparison.index}).T
    return comparison.join(table.astype({c: float for c in columns if c != "read_unit"}))


def write_results(results_dir: Path, study: dict, tables: dict, probs: dict, test: pd.DataFrame, evaluation: dict) -> None:
    from arxivcls import report

    read = lambda name: pd.read_csv(results_dir / name) if (results_dir / name).is_file() else pd.DataFrame()
    trials, history = read("trials.csv"), read("history.csv")
    comparison = tables["comparison"].assign(inference_seconds=pd.Series(evaluation["inference_seconds"]))
    with atomic_directory(results_dir) as staging:
        for name in ("study.json", "trials.csv", "history.csv"):
            if (results_dir / name).is_file():
                (staging / name).write_bytes((results_dir / name).read_bytes())
        report.write_tables(staging, {"comparison": tables["comparison"], "intervals": tables["intervals"],
                                      "differences": tables["differences"], "categories": tables["categories"],
                                      "size_bins": tables["size_bins"], "confusion_pairs": tables["confusion_pairs"],
                                      "category_differences": tables["category_differences"]})
        if "baseline_trials" in tables:  # settings such as alpha span decades: significant digits, as trials.csv
            tables["baseline_trials"].to_csv(staging / "baseline_trials.csv", index=False, float_format="%.5g")
        predictions = pd.DataFrame({"id": test.id, "true": test.category})
        for name, p in probs.items():
            predictions[f"{name}_pred"] = [tables["label_names"][i] for i in tables["predicted"][name]]
            predictions[f"{name}_confidence"] = p.max(axis=1)
        predictions.to_parquet(staging / "predictions.parquet", index=False)
        (staging / "evaluation.json").write_text(json.dumps(evaluation, indent=1))
        drawn, absent = draw_plots(staging, tables, probs, test.label.to_numpy(), trials, history, study["config"]["tune"],
                                   optuna_storage=study.get("optuna_storage"))
        report.write_report_md(staging, {
            **tables, "study_name": study.get("study", results_dir.name), "comparison": comparison, "trials": trials,
            "metric": study["config"]["tune"]["metric"], "mode": study["config"]["tune"]["mode"],
            "identical": evaluation["identical"], "test_papers": len(test),
            "plots": drawn, "absent_plots": absent, "baseline_fit_seconds": evaluation.get("baseline_fit_seconds"),
            "baseline_search_seconds": evaluation.get("baseline_search_seconds"), "control": evaluation.get("control"),
            "study": {k: v for k, v in study.items() if k not in {"config", "models"}},
        })


def evaluate_study(results_dir, extra_models: dict | None = None, address: str | None = None, log=print,
                   baseline_search=None) -> Path:
    """The evaluation stage of a finished study; `baseline_search` as add_derived_models takes it."""
    from arxivcls.data import load_prepared
    from arxivcls.raycluster import connect_ray
    from arxivcls.stats import N_RESAMPLES

    results_dir = Path(results_dir)
    study, models = read_study(results_dir, extra_models)
    if not (Path(study["prepared_data"]) / "meta.json").is_file():
        raise UserError(f"the study's prepared data is missing at {study['prepared_data']}: run the study (arxivcls tune) on this machine first")
    prepared = load_prepared(study["prepared_data"])
    config = study["config"]
    inference = Inference(config["data"]["max_length"], config["eval"]["batch_size"], config["eval"]["num_actors"],
                          config["train"].get("precision", "auto"))  # inference in the precision the models trained in
    connect_ray(address, log=log)
    test = prepared.load_split("test")  # first and only read of the test split
    probs, seconds = predict_models(models, test.text.tolist(), inference, log)
    chosen, baseline_tables = add_derived_models(probs, seconds, prepared, study, inference, test.text.tolist(), log,
                                                 baseline_search)
    readings = model_readings(models, probs, test.text.tolist(), inference)
    identical = identical_models(probs)
    if "default" in study["models"] and "default" not in models:
        identical = {"default": ("tuned", IDENTICAL_BECAUSE["default"]), **identical}
    label_names = [prepared.id2label[i] for i in range(prepared.num_labels)]
    tables = compare(probs, test, label_names, prepared.train_counts, config["eval"]["top_k"], config["data"]["seed"])
    tables["comparison"] = with_readings(tables["comparison"], readings)
    tables.update(baseline_tables, readings=readings)
    evaluation = {"test_papers": len(test), "inference_seconds": seconds, **chosen, "models": models,
                  "identical": identical, "bootstrap": {"resamples": N_RESAMPLES, "seed": config["data"]["seed"]}}
    write_results(results_dir, study, tables, probs, test, evaluation)
    log(f"results written to {results_dir}/ (report.md, comparison.csv, ...)")
    log(tables["comparison"][["accuracy", "macro_f1", "weighted_f1"]].round(4).to_string())
    return results_dir
