"""HPO efficiency: plain sequential Optuna (every trial to the full epoch budget) vs arxivcls's study.

Same search space, trial count, seeds and data subset (real papers of a few categories, tiny random
BERT whose WordPiece vocabulary is trained on those papers, max_length 128):

  (a) plain Optuna: TPESampler(seed), the default point enqueued first, `n` trials one after another;
      each trial is one Ray Train run of arxivcls's training code (build_trainer().fit()) for the
      full epoch budget (patience off) on as many CPUs as one trial of (b) gets (1 here: torch's
      float sums depend on the thread count, and with equal threads a configuration that both
      approaches sample trains to the same scores in both, so the comparison measures the search
      and its early stopping, not retraining noise; `--a-cpus 2` gives (a) the whole machine);
      objective = best val_macro_f1 over its epochs
  (b) arxivcls.tuning.run_study(config, evaluate=False): OptunaSearch (same TPE seed, the default
      point first) + ASHA (max_t = the epoch budget; grace 2, reduction factor 3 by default, chosen
      by replaying early stopping on (a)'s curves of seeds 1 and 2, measured on seeds 3 and 4),
      patience 2 (the package default), trials of 1 CPU each, as many at a time as fit (2 here)

Epochs are counted as trained: for (b) study.json's trained_epochs.

All read the same tokenized data (prepared and tokenized once per seed). Each seed runs the
approaches back to back in one process; the order alternates between seeds (a b, then b a).
"""
import argparse
import dataclasses
import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from benchmarks.common import DATA, Report, local_ray, make_tiny_bert, md_table, met, read_reports, reports_to_file

NAME = "hpo_efficiency"
CATEGORIES = ["cs.CV", "cs.CL", "math.AP", "quant-ph", "cs.RO", "stat.ML", "cs.CR", "astro-ph.GA"]
SPACE = {  # a tiny randomly initialised BERT needs far larger learning rates than a pretrained one
    "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    "batch_size": {"type": "choice", "values": [16, 32, 64]},
    "weight_decay": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
    "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.1},
    "loss": {"type": "choice", "values": ["ce", "weighted_ce"]},
    "label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.1},
}


@contextmanager
def chdir(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def make_data(workdir: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    df = pd.read_parquet(DATA, columns=["id", "title", "summary", "category_code", "categories", "source"])
    df = df[df.category_code.isin(CATEGORIES)].groupby("category_code").sample(per_class, random_state=seed)
    path = workdir / "papers.parquet"
    df.reset_index(drop=True).to_parquet(path, index=False)
    tiny = make_tiny_bert(workdir / "tiny_bert", (df.title + " " + df.summary).tolist())
    return path, tiny


def base_config(papers: Path, tiny: Path, workdir: Path, args, seed: int):
    from arxivcls.config import Config, DataConfig, ModelConfig, TrainConfig, TuneConfig, validate

    config = Config(
        data=DataConfig(path=str(papers), max_length=args.max_length, cache_dir=str(workdir / "cache"), seed=42),
        model=ModelConfig(name=str(tiny)),
        train=TrainConfig(learning_rate=2e-3, batch_size=32, epochs=args.epochs, weight_decay=0.01, warmup_ratio=0.05,
                          eval_batch_size=256, cpus_per_worker=1, seed=seed, storage_path=str(workdir / "runs"),
                          max_failures=0),
        tune=TuneConfig(study=f"hpo-seed{seed}", num_samples=args.trials, metric="val_macro_f1", mode="max",
                        search_space=dict(SPACE), grace_period=args.grace, reduction_factor=args.reduction_factor, seed=seed,
                        results_dir=str(workdir / "results"), max_failures=0),
    )
    validate(config)
    return config


def suggest(trial, space: dict) -> dict:
    params = {}
    for name, spec in space.items():
        if spec["type"] == "loguniform":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=True)
        elif spec["type"] == "uniform":
            params[name] = trial.suggest_float(name, spec["low"], spec["high"])
        elif spec["type"] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]))
        else:
            params[name] = trial.suggest_categorical(name, list(spec["values"]))
    return params


def plain_optuna(config, inputs, seed: int, cpus: int) -> dict:
    """The original approach: sequential Optuna trials, each trained for the full epoch budget."""
    import optuna

    from arxivcls.train import build_trainer
    from arxivcls.search import default_point

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = config.tune.search_space
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, config.tune.num_samples)))
    study.enqueue_trial(default_point(space, config))
    epochs_run, accuracy, curves, params_list = [], {}, [], []

    def objective(trial):
        params = suggest(trial, space)
        params_list.append(params)
        train = dataclasses.replace(config.train, **params, metric="val_macro_f1", mode="max", patience=config.train.epochs,
                                    cpus_per_worker=cpus)
        name = f"plain-seed{seed}-{trial.number}"
        reports_file = Path(config.train.storage_path) / f"{name}.jsonl"
        result = build_trainer(dataclasses.replace(inputs.trial, train=train), name=name, callbacks=[reports_to_file(reports_file)]).fit()
        if result.error:
            raise RuntimeError(result.error)
        history = pd.DataFrame(read_reports(reports_file)).drop_duplicates("epoch", keep="last").sort_values("epoch")
        epochs_run.append(int(history.epoch.max()))
        curves.append(history.val_macro_f1.tolist())
        best = history.loc[history.val_macro_f1.idxmax()]
        accuracy[trial.number] = float(best.val_accuracy)
        return float(best.val_macro_f1)

    started = time.perf_counter()
    study.optimize(objective, n_trials=config.tune.num_samples)
    wall = time.perf_counter() - started
    return {"approach": "(a) plain Optuna, full budget", "trials": len(study.trials), "trial-epochs": sum(epochs_run),
            "wall s": wall, "best val_macro_f1": study.best_value,
            "best trial val_accuracy": accuracy[study.best_trial.number], "best trial": f"#{study.best_trial.number + 1}",
            "stopped early": 0, "curves": curves, "params": params_list}


def replay_successive_halving(curves: list[list[float]], grace: int, rf: int, budget: int, patience: int | None) -> dict:
    """What early stopping would have done to these full-budget learning curves, without training
    noise: synchronous successive halving (Ray's ASHA is its asynchronous form, which promotes a
    little more, since the first trials to reach a rung find it empty): at epochs grace, grace*rf, ...
    the top ceil(1/rf) of the trials that reached the rung go on; `patience` stops a trial after
    that many epochs without a new best, as arxivcls's loop does."""
    def length(curve, limit):
        if patience is None:
            return limit
        best, bad = -math.inf, 0
        for epoch, value in enumerate(curve[:limit], 1):
            best, bad = (value, 0) if value > best else (best, bad + 1)
            if bad >= patience:
                return epoch
        return limit

    ran = {i: 0 for i in range(len(curves))}
    alive, milestone = list(ran), grace
    while milestone < budget and len(alive) > 1:
        for i in alive:
            ran[i] = length(curves[i], milestone)
        reached = sorted((i for i in alive if ran[i] == milestone), key=lambda i: curves[i][milestone - 1], reverse=True)
        alive = reached[:math.ceil(len(reached) / rf)]
        milestone *= rf
    for i in alive:
        ran[i] = length(curves[i], budget)
    found = max(max(curves[i][:ran[i]]) for i in ran if ran[i])
    return {"epochs": sum(ran.values()), "best": found}


def arxivcls_study(config, workdir: Path, label: str) -> dict:
    import json

    from arxivcls.tuning import run_study

    started = time.perf_counter()
    with chdir(workdir):  # run_study exports the best models to ./models/<study>
        results = run_study(config, evaluate=False, log=lambda *a: print(*a, flush=True))
    wall = time.perf_counter() - started
    results = Path(config.tune.results_dir) / config.tune.study
    study = json.loads((results / "study.json").read_text())
    trials = pd.read_csv(results / "trials.csv")
    history = pd.read_csv(results / "history.csv")
    curves = {row.trial_id: ({k[2:]: getattr(row, k) for k in trials.columns if k.startswith("p_")},
                             history[history.trial_id == row.trial_id].sort_values("epoch").val_macro_f1.tolist())
              for row in trials.itertuples()}
    best = trials.sort_values("best_metric", ascending=False).iloc[0]
    statuses = trials.status.value_counts().to_dict()
    return {"approach": label, "trials": len(trials),
            "trial-epochs": int(study["trained_epochs"]), "wall s": wall, "best val_macro_f1": float(best.best_metric),
            "best trial val_accuracy": float(best.get("best_val_accuracy", float("nan"))),
            "stopped early": int(sum(n for k, n in statuses.items() if k.startswith("stopped_by"))),
            "statuses": ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())), "curves": curves,
            "best params": {k[2:]: best[k] for k in trials.columns if k.startswith("p_")}}


def same(params_a: dict, params_b: dict) -> bool:
    """The same hyperparameters (trials.csv holds 5 significant digits)."""
    return all(math.isclose(params_b[k], v, rel_tol=1e-4) if isinstance(v, float) else params_b[k] == v
               for k, v in params_a.items())


def same_configurations(a: dict, b: dict) -> list[dict]:
    """A study's trials whose hyperparameters equal one of (a)'s: do their learning curves agree?"""
    rows = []
    for params_b, curve_b in b["curves"].values():
        for number, (params_a, curve_a) in enumerate(zip(a["params"], a["curves"])):
            if same(params_a, params_b):
                common = min(len(curve_a), len(curve_b))
                rows.append({"(a) trial": number + 1, "epochs (a)": len(curve_a), "epochs (study)": len(curve_b),
                             "max abs F1 difference over common epochs":
                                 max(abs(x - y) for x, y in zip(curve_a[:common], curve_b[:common]))})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8, help="the full epoch budget of every trial (ASHA max_t)")
    parser.add_argument("--seeds", default="3,4")
    parser.add_argument("--grace", type=int, default=2, help="(b)'s ASHA grace period in epochs")
    parser.add_argument("--reduction-factor", type=int, default=3, help="(b)'s ASHA reduction factor")
    parser.add_argument("--approaches", default="a,b", help="which of a, b to run (a is needed)")
    parser.add_argument("--per-class", type=int, default=300, help="papers per category (8 categories)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2, help="the local Ray cluster's CPUs")
    parser.add_argument("--a-cpus", type=int, default=1, help="CPUs (torch threads) of each (a) trial; (b)'s trials get 1")
    args = parser.parse_args(argv)

    from arxivcls.inputs import prepare_inputs

    report = Report(NAME, "HPO efficiency: plain sequential Optuna vs arxivcls's study (OptunaSearch + ASHA)")
    rows, pairs, replays, same_rows = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-hpo-") as tmp, local_ray(num_cpus=args.cpus):
        workdir = Path(tmp)
        papers, tiny = make_data(workdir, args.per_class, seed=0)
        seeds = [int(s) for s in args.seeds.split(",")]
        for i, seed in enumerate(seeds):
            config = base_config(papers, tiny, workdir, args, seed)
            inputs = prepare_inputs(config, log=lambda *a: None)  # tokenized once; all approaches reuse it
            split_sizes = inputs.prepared.meta["split_sizes"]
            chosen = [a for a in "ab" if a in args.approaches.split(",")]
            order = chosen if i % 2 == 0 else chosen[::-1]
            result = {}
            for approach in order:
                print(f"--- seed {seed}: approach {approach}", flush=True)
                if approach == "a":
                    result["a"] = plain_optuna(config, inputs, seed, args.a_cpus)
                elif approach == "b":
                    result["b"] = arxivcls_study(config, workdir, "(b) arxivcls study, OptunaSearch + ASHA")
                print({k: v for k, v in result[approach].items() if k not in ("curves", "params")}, flush=True)
            studies = [k for k in ("b",) if k in result]
            for key in studies:
                # Which configuration won: one (a) also trained, or one only this study's sampler proposed?
                matches = [n + 1 for n, params in enumerate(result["a"]["params"]) if same(params, result[key]["best params"])]
                result[key]["best trial"] = f"(a)'s #{matches[0]}" if matches else "not one of (a)'s"
            for key in ["a", *studies]:
                rows.append({"seed": seed, **{k: v for k, v in result[key].items() if k not in ("curves", "params", "best params")}})
            same_rows += [{"seed": seed, "study": f"({key})", **row} for key in studies
                          for row in same_configurations(result["a"], result[key])]
            curves = result["a"]["curves"]
            full = max(max(c) for c in curves)
            for grace, rf in ((1, 2), (1, 3), (2, 2), (2, 3)):
                for patience in (None, config.train.patience):
                    replay = replay_successive_halving(curves, grace, rf, args.epochs, patience)
                    replays.append({"seed": seed, "grace": grace, "reduction factor": rf,
                                    "patience": patience or "off", "epochs / full budget": replay["epochs"] / sum(map(len, curves)),
                                    "best F1 found - full budget's": replay["best"] - full})
            a = result["a"]
            for key in studies:
                other = result[key]
                pairs.append({"seed": seed, "study": f"({key})", "epochs / (a)": other["trial-epochs"] / a["trial-epochs"],
                              "wall / (a)": other["wall s"] / a["wall s"],
                              "best F1 - (a)": other["best val_macro_f1"] - a["best val_macro_f1"]})

    report.add(f"Data: {args.per_class} real papers from each of {len(CATEGORIES)} categories ({', '.join(CATEGORIES)}), "
               f"stratified split {split_sizes}; tiny random BERT (2 layers, width 32, 2k WordPiece vocab built from "
               f"the papers), max_length {args.max_length}. {args.trials} trials per approach, epoch budget "
               f"{args.epochs}, seeds {args.seeds} (TPE sampler seed and training seed); (a) {args.a_cpus} CPU(s) per trial, (b) and (c) 1 "
               f"CPU per trial, as many at a time as fit; (b)'s ASHA grace period "
               f"{args.grace}, reduction factor {args.reduction_factor}. Objective: best validation "
               f"macro F1 over a trial's epochs. Epochs of (b) and (c) are the epochs trained, redone ones included.\n")
    report.add("Search space (all approaches): " + "; ".join(
        f"{k} {v['type']} " + (str(v['values']) if 'values' in v else f"[{v['low']:g}, {v['high']:g}]") for k, v in SPACE.items())
        + f"; epochs fixed at {args.epochs}. Default point (trial 1 of all): lr 2e-3, batch 32, weight decay 0.01, "
        f"warmup 0.05, ce, no label smoothing.\n")
    report.add("## Runs\n")
    report.add(md_table(rows, ["seed", "approach", "trials", "trial-epochs", "wall s", "best val_macro_f1",
                               "best trial val_accuracy", "best trial", "stopped early", "statuses"], floatfmt="{:.4g}"))
    report.add("`best trial`: the trial that reached the best F1; for (b) and (c), which of (a)'s trials had the same "
               "configuration (the first five configurations of all three come from the same seeded sampler).\n")
    report.add("## (b) and (c) relative to (a)\n")
    report.add(md_table(pairs, floatfmt="{:.3f}"))
    report.add("## The same configuration in (a) and in a study\n")
    report.add(f"(a)'s trials ran on {args.a_cpus} CPU(s) each and the studies' on 1; the first trials of all come from the "
               "same seeded sampler. Where a study trained a configuration that (a) also trained, this compares their "
               "per-epoch validation macro F1 (0 = training reproduced, a resumed trial included, so the F1 difference "
               "between the approaches is the search's and the early stopping's, not noise).\n")
    report.add(md_table(same_rows, floatfmt="{:.4g}") if same_rows else "No configuration was trained by both.\n")
    report.add("## Early stopping replayed on (a)'s measured learning curves\n")
    report.add("The same decisions without training noise: each (a) trial's per-epoch validation macro F1 "
               "(full budget, one run) fed to successive halving (see `replay_successive_halving`): what each "
               "grace period / reduction factor, with and without arxivcls's patience of 2, would have spent "
               "and found on exactly these trials.\n")
    report.add(md_table(replays, floatfmt="{:.3f}"))
    report.add("## Target\n")
    targets, measured = [], f"measured (seeds {args.seeds})"
    for study in sorted({p["study"] for p in pairs}):
        mine = [p for p in pairs if p["study"] == study]
        targets += [
            {"target": f"{study} trial-epochs <= 50% of (a)", measured: ", ".join(f"{p['epochs / (a)']:.0%}" for p in mine),
             "status": met(all(p["epochs / (a)"] <= 0.5 for p in mine))},
            {"target": f"{study} best val macro F1 >= (a) - 0.01", measured: ", ".join(f"{p['best F1 - (a)']:+.4f}" for p in mine),
             "status": met(all(p["best F1 - (a)"] >= -0.01 for p in mine))},
        ]
    report.add(md_table(targets))
    report.write()


if __name__ == "__main__":
    main()
