"""The TF-IDF baseline tuned as the transformer is: an Optuna (TPE, seeded) study over
`baseline.search_space`, every trial scored on the validation split with the study's objective
(`tune.metric`), every trial a 1-CPU Ray task (on a GPU cluster they run beside the GPU trials).

Trials go in batches of `baseline.trials_per_batch`: asked together, run as Ray tasks, told
together. The batch size is the config's, not the cluster's, so a config gives the same trials
on any cluster. Trial 0 is BaselineParams' defaults, the baseline's "default configuration".
"""
import dataclasses
import time

import numpy as np
import pandas as pd

from arxivcls.baseline import BaselineParams, fit_baseline
from arxivcls.errors import UserError


@dataclasses.dataclass
class SearchData:
    """What every trial fits and scores on (put in Ray's object store once)."""
    train_texts: list[str]
    train_labels: np.ndarray
    val_texts: list[str]
    val_labels: np.ndarray
    num_classes: int
    seed: int


@dataclasses.dataclass
class BaselineSearch:
    best: BaselineParams
    trials: pd.DataFrame  # trial, default, p_<param>..., status, <metric>, seconds
    metric: str
    seconds: float  # the whole search, wall clock


def validation_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The transformer's validation metrics (train.validate): val_<classification metric> and val_loss."""
    from arxivcls.metrics import classification_metrics

    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
    return {**{f"val_{k}": float(v) for k, v in classification_metrics(labels, probs).items()}, "val_loss": float(loss)}


def run_trial(data: SearchData, params: dict, metric: str) -> dict:
    """One trial (a Ray task): fit on train, score on validation."""
    started = time.perf_counter()
    try:
        baseline = fit_baseline(data.train_texts, data.train_labels, data.num_classes, data.seed,
                                BaselineParams(**params), calibration=(data.val_texts, data.val_labels))
    except ValueError as e:  # e.g. a min_df that leaves no term
        return {"status": "failed", "error": str(e).splitlines()[0][:200], "seconds": time.perf_counter() - started}
    value = validation_scores(data.val_labels, baseline.predict_proba(data.val_texts))[metric]
    return {"status": "completed", "value": value, "seconds": time.perf_counter() - started}


def distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    made = {}
    for name, spec in space.items():
        if spec["type"] == "choice":
            made[name] = CategoricalDistribution(list(spec["values"]))
        elif spec["type"] == "int":
            made[name] = IntDistribution(int(spec["low"]), int(spec["high"]))
        else:
            made[name] = FloatDistribution(float(spec["low"]), float(spec["high"]), log=spec["type"] == "loguniform")
    return made


def default_point(space: dict, train_papers: int) -> dict:
    """BaselineParams' defaults of the searched settings that the space holds (min_df as its
    automatic rule sets it for `train_papers`)."""
    from arxivcls.baseline import MIN_DOCS_FOR_MIN_DF

    defaults = BaselineParams()
    point = {}
    for name, distribution in distributions(space).items():
        value = getattr(defaults, name)
        if name == "min_df" and value == 0:
            value = 2 if train_papers >= MIN_DOCS_FOR_MIN_DF else 1
        if hasattr(distribution, "choices"):
            if value in distribution.choices:
                point[name] = value
        elif distribution.low <= value <= distribution.high:
            point[name] = value
    return point


def ray_tasks(data: SearchData):
    """points -> results: one 1-CPU Ray task per point, the data in the object store once."""
    import ray

    task, data_ref = ray.remote(num_cpus=1)(run_trial), ray.put(data)
    return lambda points, metric: ray.get([task.remote(data_ref, point, metric) for point in points])


def search_baseline(data: SearchData, config: dict, metric: str, mode: str, seed: int, log=print,
                    run_batch=None) -> BaselineSearch:
    """`config`: the study's `baseline` section (a BaselineConfig as a dict). `run_batch(points,
    metric)` runs a batch of trials (default: Ray tasks)."""
    import optuna

    space = config["search_space"]
    if metric not in validation_scores(np.array([0]), np.ones((1, 1))):
        raise UserError(f"tune.metric {metric}: the baseline's validation has no such metric")
    run_batch = run_batch or ray_tasks(data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    num_trials = config["num_trials"] if space else 1
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(1, num_trials // 2)))
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize", sampler=sampler)
    study.enqueue_trial(default_point(space, len(data.train_texts)))
    rows, started = [], time.perf_counter()
    while len(rows) < num_trials:
        asked = [study.ask(distributions(space)) for _ in range(min(config["trials_per_batch"], num_trials - len(rows)))]
        results = run_batch([trial.params for trial in asked], metric)
        for trial, result in zip(asked, results):
            if result["status"] == "completed":
                study.tell(trial, result["value"])
            else:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            rows.append({"trial": trial.number, "default": trial.number == 0,
                         **{f"p_{k}": v for k, v in trial.params.items()}, "status": result["status"],
                         metric: result.get("value", np.nan), "seconds": round(result["seconds"], 3)})
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise UserError(f"baseline: every one of its {num_trials} trials failed ({results[-1].get('error', '')})")
    best = BaselineParams(**study.best_trial.params)
    seconds = time.perf_counter() - started
    log(f"baseline: {num_trials} trials in {seconds:.1f} s; best {metric} {study.best_value:.4f} (trial {study.best_trial.number}): "
        + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in study.best_trial.params.items()))
    return BaselineSearch(best, pd.DataFrame(rows), metric, seconds)


def search_study_baseline(prepared, config: dict, log=print) -> BaselineSearch:
    """The baseline's study for a study's prepared data and config (Config.to_dict()): what the
    evaluation stage runs, or takes ready from a caller that ran it beside the transformer's trials."""
    from arxivcls.config import BaselineConfig

    train, val = prepared.load_split("train"), prepared.load_split("val")
    data = SearchData(train.text.tolist(), train.label.to_numpy(), val.text.tolist(), val.label.to_numpy(),
                      prepared.num_labels, config["data"]["seed"])
    baseline_cfg = {**dataclasses.asdict(BaselineConfig()), **config.get("baseline", {})}
    return search_baseline(data, baseline_cfg, config["tune"]["metric"], config["tune"]["mode"], config["tune"]["seed"], log)
