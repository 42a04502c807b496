"""A Ray Tune study: OptunaSearch (TPE) proposes, ASHA stops early, each trial is a Ray Train run.

Data is prepared and tokenized once on the driver and shared with every trial through the object store.
"""
import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from arxivcls.config import Config, TrainConfig
from arxivcls.errors import UserError
from arxivcls.files import atomic_directory, atomic_write_text

SEARCHED_TRIAL_PREFIX = "p_"  # hyperparameter columns in trials.csv
# The per-trial driver only waits on its Train run: it holds no CPU (Tune needs a non-empty
# request, so it asks for 1 MiB of memory). A CPU per idle driver is what deadlocked two 1-CPU
# trials on a 2-CPU machine: both drivers held a CPU and neither worker group could start.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
# tune.scheduler: sync's rung decisions, in a subdirectory of the study's: Tune copies every .json
# file at the top of it to its staging directory on --resume and later copies them back, which
# would put the old decisions back over the new.
HALVING_STATE = ("halving", "rungs.json")


# ---------------------------------------------------------------- search space and searcher

def tune_search_space(space: dict) -> dict:
    from ray import tune

    domains = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "loguniform":
            domains[name] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "uniform":
            domains[name] = tune.uniform(spec["low"], spec["high"])
        elif kind == "int":
            domains[name] = tune.randint(int(spec["low"]), int(spec["high"]) + 1)  # inclusive high
        else:
            domains[name] = tune.choice(list(spec["values"]))
    return domains


def default_point(space: dict, train: TrainConfig) -> dict:
    """The original study's default configuration, expressed in the searched parameters."""
    return {name: getattr(train, name) for name in space}


def _budget_aware_searcher_class():
    """OptunaSearch that tells Optuna the truth about trials stopped early: PRUNED at the epoch
    they reached, with their score there; not COMPLETE. A finished trial's value is its best
    epoch's score (the study's objective), not its last epoch's.

    Stock OptunaSearch reports an ASHA-stopped trial as COMPLETE with its low-budget score, which
    TPE then treats as a finished result at full budget. With tune.scheduler: sync a trial that
    pauses at a rung is told PRUNED there at once (on_pause): TPE learns only from finished
    trials, and in a synchronous study nothing finishes before every trial has reached the first
    rung, so TPE would otherwise propose every trial blind. A paused trial that later goes on
    sends Optuna nothing more. Defined lazily (optuna and ray are heavy imports) but at module
    level, so Tune can pickle it into the experiment state for --resume.
    """
    global BudgetAwareOptunaSearch
    if "BudgetAwareOptunaSearch" in globals():
        return BudgetAwareOptunaSearch
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class BudgetAwareOptunaSearch(OptunaSearch):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._prune_at_next_result = set()

        def on_pause(self, trial_id):
            self._prune_at_next_result.add(trial_id)

        def on_unpause(self, trial_id):
            pass

        def on_trial_result(self, trial_id, result):
            if trial_id in self._completed_trials:  # told PRUNED at a rung, and went on
                return
            # Optuna's step is the epoch: a trial restarted after a pause counts Tune's
            # training_iteration from 1 again, and Optuna ignores repeated steps.
            super().on_trial_result(trial_id, {**result, "training_iteration": result.get("epoch", result.get("training_iteration"))})
            if trial_id in self._prune_at_next_result:
                self._prune_at_next_result.discard(trial_id)
                self._prune(trial_id)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials:
                return
            stopped_early = (result and not error and not result.get("stopped_by_patience")
                             and result.get("epoch", 0) < result.get("planned_epochs", 0))
            if stopped_early and trial_id in self._ot_trials:
                # Tune does not pass a STOPped trial's last result to on_trial_result
                if self.metric in result:
                    self._ot_trials[trial_id].report(result[self.metric], result["epoch"])
                self._prune(trial_id)
                return
            if result and f"best_{self.metric}" in result:  # the objective is the trial's best epoch, not its last
                result = {**result, self.metric: result[f"best_{self.metric}"]}
            super().on_trial_complete(trial_id, result=result, error=error)

        def _prune(self, trial_id):
            self._ot_study.tell(self._ot_trials[trial_id], None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)

    BudgetAwareOptunaSearch.__qualname__ = "BudgetAwareOptunaSearch"
    BudgetAwareOptunaSearch.__module__ = __name__
    return BudgetAwareOptunaSearch


def __getattr__(name: str):  # lets pickle find the lazily defined class in a fresh process
    if name == "BudgetAwareOptunaSearch":
        return _budget_aware_searcher_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_searcher(config: Config):
    import optuna

    tune_cfg = config.tune
    return _budget_aware_searcher_class()(
        metric=tune_cfg.metric, mode=tune_cfg.mode,
        points_to_evaluate=[default_point(tune_cfg.search_space, config.train)],
        sampler=optuna.samplers.TPESampler(seed=tune_cfg.seed, n_startup_trials=min(5, tune_cfg.num_samples)),
    )


# ---------------------------------------------------------------- resources and disk

def trial_resources(train: TrainConfig) -> dict:
    """What one trial's Ray Train workers hold (its driver holds no CPU: TRIAL_DRIVER_RESOURCES)."""
    per_worker = {"CPU": float(train.cpus_per_worker)}
    if train.gpus_per_worker > 0:
        per_worker["GPU"] = float(train.gpus_per_worker)
    return {k: v * train.num_workers for k, v in per_worker.items()}


def plan_concurrency(available: dict, train: TrainConfig, num_samples: int, max_concurrent: int = 0) -> int:
    """How many trials can run at once on the free resources (never more than fit)."""
    need = trial_resources(train)
    fits = min(math.floor(available.get(res, 0.0) / amount + 1e-9) for res, amount in need.items())
    # Each worker is placed whole on one node: also bound by how many workers fit per node is the
    # autoscaler's job on a cluster; here we bound by the cluster total.
    if fits < 1:
        if max_concurrent > 0:  # an autoscaling cluster grows to fit: trust the explicit limit
            return min(max_concurrent, num_samples)
        have = ", ".join(f"{k}={available.get(k, 0):g}" for k in need)
        want = ", ".join(f"{k}={v:g}" for k, v in need.items())
        raise UserError(f"one trial needs {want} but the Ray cluster has only {have} free: "
                        f"lower train.num_workers / cpus_per_worker / gpus_per_worker, or add nodes")
    if max_concurrent > 0:
        fits = min(fits, max_concurrent)
    return max(1, min(fits, num_samples))


def checkpoint_bytes(model_dir: str) -> int:
    """Weights + AdamW's two moments, as a checkpoint holds them."""
    weights = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    return 3 * weights


def check_disk(storage_path: str, need_bytes: int, headroom_gb: float) -> dict:
    if "://" in storage_path:
        return {"storage": storage_path, "estimated_need_gb": need_bytes / 1e9, "free_gb": None}
    path = Path(storage_path).expanduser().resolve()
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes + headroom_gb * 1e9:
        raise UserError(f"storage {path} has {free / 1e9:.1f} GB free but the study may need "
                        f"{need_bytes / 1e9:.1f} GB of checkpoints (+{headroom_gb:g} GB headroom): free space or "
                        f"lower tune.num_samples / train.checkpoint_keep")
    return {"storage": str(path), "estimated_need_gb": round(need_bytes / 1e9, 3), "free_gb": round(free / 1e9, 1)}


def disk_usage_bytes(path: str) -> int | None:
    if "://" in path or not Path(path).exists():
        return None
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------- the per-trial driver

def trial_driver(config: dict, base: dict) -> None:
    """Runs inside a Tune trial: one Ray Train run with this trial's hyperparameters."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from arxivcls.train import (FINAL_RESULT, best_checkpoint, build_trainer, continue_marker, last_reported_metrics,
                                prune_checkpoints, read_run_file, trial_run_name, write_run_file)

    train = TrainConfig(**{**base["train"], **config})
    trial_id = ray.tune.get_context().get_trial_id()
    name = trial_run_name(trial_id)
    # Tune saves the study's state every few seconds: when the driver dies just after a trial
    # finished, a resumed study starts that trial again. Its Train run is done, so hand Tune the
    # saved final result instead of training again (and instead of a result without metrics).
    finished = read_run_file(train.storage_path, name, FINAL_RESULT)
    if finished is not None:
        print(f"trial {trial_id}: its Train run had already finished; replaying its result, not retraining", flush=True)
        for metrics in json.loads(finished):
            ray.tune.report(metrics)
        return
    # A trial that was waiting at a rung of synchronous halving when the study stopped (or its
    # driver died): report that rung again, before any worker starts, so the scheduler pauses it
    # again, or stops it, instead of letting it train past a rung the study has not decided.
    last = last_reported_metrics(train.storage_path, name)
    rungs = base["loop_base"].get("wait_at_epochs", ())
    if (last and last.get("epoch") in rungs and last["epoch"] < last.get("planned_epochs", 0)
            and not last.get("stopped_by_patience")
            and read_run_file(train.storage_path, name, continue_marker(last["epoch"])) is None):
        ray.tune.report({**last, **_checkpoint_of_epoch(train.storage_path, name, last["epoch"])})
    # A stable name: a retried trial (Tune FailureConfig) finds its Train run and resumes it.
    result = build_trainer(train, base["loop_base"], name=name, callbacks=[TuneReportCallback()]).fit()
    checkpoint, _ = best_checkpoint(result, train.metric, train.mode)
    replay = [{**metrics, "checkpoint_path": checkpoint.path} for c, metrics in result.best_checkpoints or [] if c is checkpoint]
    last = last_reported_metrics(train.storage_path, name)
    if last and (not replay or last.get("epoch") != replay[0].get("epoch")):
        replay.append(last)
    write_run_file(train.storage_path, name, FINAL_RESULT, json.dumps(replay))
    prune_checkpoints(result, train.checkpoint_keep, train.metric, train.mode)


def _checkpoint_of_epoch(storage: str, name: str, epoch: int) -> dict:
    """{"checkpoint_path": ...} when the run's newest checkpoint (local disk) is of `epoch`."""
    from arxivcls.train import is_local, newest_checkpoint

    newest = newest_checkpoint(Path(storage) / name) if is_local(storage) else None
    if newest and (newest / "metrics.json").is_file() and json.loads((newest / "metrics.json").read_text()).get("epoch") == epoch:
        return {"checkpoint_path": str(newest)}
    return {}


# ---------------------------------------------------------------- the early-stopping rule

def make_scheduler(config: Config, loop_base: dict, max_epochs: int, concurrency: int, experiment: str):
    """(search algorithm, Tune scheduler, the training loop's inputs) for tune.scheduler."""
    import functools

    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    tune_cfg = config.tune
    if tune_cfg.scheduler == "asha":
        return (ConcurrencyLimiter(make_searcher(config), max_concurrent=concurrency),
                ASHAScheduler(time_attr="epoch", metric=tune_cfg.metric, mode=tune_cfg.mode, max_t=max_epochs,
                              grace_period=tune_cfg.grace_period, reduction_factor=tune_cfg.reduction_factor),
                loop_base)
    from arxivcls.halving import PausableLimiter, SynchronousHalving, rung_epochs
    from arxivcls.train import mark_continue, read_run_file, write_run_file

    rungs = rung_epochs(tune_cfg.grace_period, tune_cfg.reduction_factor, max_epochs)
    scheduler = SynchronousHalving(tune_cfg.metric, tune_cfg.mode, rungs, tune_cfg.reduction_factor,
                                   num_trials=tune_cfg.num_samples, max_running=concurrency,
                                   mark_continue=functools.partial(mark_continue, experiment),
                                   save_state=functools.partial(write_run_file, experiment, *HALVING_STATE),
                                   load_state=functools.partial(read_run_file, experiment, *HALVING_STATE))
    return (PausableLimiter(make_searcher(config), max_concurrent=concurrency), scheduler,
            {**loop_base, "wait_at_epochs": rungs})


# ---------------------------------------------------------------- the study

def study_paths(config: Config) -> dict:
    from arxivcls.train import storage_uri

    storage = storage_uri(config.train.storage_path)
    return {"storage": storage, "experiment": f"{storage.rstrip('/')}/{config.tune.study}",
            "results": Path(config.tune.results_dir) / config.tune.study,
            "models": Path(config.tune.models_dir) / config.tune.study}


def _experiment_exists(path: str) -> bool:
    from ray.tune import Tuner

    try:
        return Tuner.can_restore(path)
    except Exception:
        return False


def run_study(config: Config, resume: bool = False, address: str | None = None, evaluate: bool = True, log=print) -> Path:
    import ray
    from ray import tune

    from arxivcls.train import connect_ray, preflight, prepare_inputs

    paths = study_paths(config)
    exists = _experiment_exists(paths["experiment"])
    if resume and not exists:
        raise UserError(f"--resume: no study to resume at {paths['experiment']}")
    if not resume and exists:
        raise UserError(f"study '{config.tune.study}' already exists at {paths['experiment']}: "
                        f"add --resume to continue it, or --set tune.study=NEW_NAME")
    _check_writable(paths["results"].parent)
    model_dir = preflight(config)
    checkpoints = config.tune.num_samples * (config.train.checkpoint_keep + 1) * checkpoint_bytes(model_dir)
    disk = check_disk(paths["storage"], checkpoints, config.tune.min_free_disk_gb)

    started = time.time()
    connect_ray(address, log=log)
    inputs = prepare_inputs(config, log=log)
    # Train runs live inside the study's directory: one place to find, measure and delete a study.
    train = dataclasses.replace(config.train, metric=config.tune.metric, mode=config.tune.mode,
                                storage_path=paths["experiment"])
    available = ray.available_resources()
    concurrency = plan_concurrency(available, train, config.tune.num_samples, config.tune.max_concurrent)
    log(f"study '{config.tune.study}': {config.tune.num_samples} trials, {concurrency} at a time "
        f"(each {trial_resources(train)}; free {({k: available[k] for k in ('CPU', 'GPU') if k in available})}), "
        f"objective {config.tune.metric} ({config.tune.mode})")

    max_epochs = max(train.epochs, int(config.tune.search_space.get("epochs", {}).get("high", train.epochs)))
    search_alg, scheduler, loop_base = make_scheduler(config, inputs["loop_base"], max_epochs, concurrency, paths["experiment"])
    base = {"train": dataclasses.asdict(train), "loop_base": loop_base}
    trainable = tune.with_resources(tune.with_parameters(trial_driver, base=base), TRIAL_DRIVER_RESOURCES)
    # Save the study's state every 2 s (Ray's "auto" waits >= 10 s): a killed driver then loses
    # at most a couple of seconds of bookkeeping; the state is a few KB.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    if resume:
        log(f"resuming study from {paths['experiment']}")
        tuner = tune.Tuner.restore(paths["experiment"], trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_search_space(config.tune.search_space),
            tune_config=tune.TuneConfig(
                search_alg=search_alg,
                scheduler=scheduler,
                num_samples=config.tune.num_samples,
                max_concurrent_trials=concurrency,
            ),
            run_config=tune.RunConfig(
                name=config.tune.study, storage_path=paths["storage"],
                failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
            ),
        )
    grid = tuner.fit()

    prune_study_checkpoints(grid, paths["experiment"], config.train.checkpoint_keep, config.tune.metric, config.tune.mode)
    trials, history = collect_trials(grid, config)
    if trials.empty or trials.best_metric.isna().all():
        raise RuntimeError(f"no trial reported {config.tune.metric}; see the trial errors under {paths['experiment']}")
    ascending = config.tune.mode == "min"
    best = trials.dropna(subset=["best_metric"]).sort_values("best_metric", ascending=ascending).iloc[0]
    if not trials.is_default.iloc[0]:
        raise RuntimeError("the default configuration trial is missing from the study")
    default = trials.iloc[0]
    from arxivcls.train import export_model

    models = {"tuned": export_model(best.best_checkpoint, str(paths["models"] / "tuned")),
              "default": export_model(default.best_checkpoint, str(paths["models"] / "default"))}
    study = {
        "study": config.tune.study, "config": config.to_dict(), "ray_version": ray.__version__,
        "resources_seen": {k: v for k, v in available.items() if not k.startswith("node:")},
        "concurrency": concurrency, "trial_resources": trial_resources(train),
        "wall_seconds": round(time.time() - started, 1), "num_trials": len(trials),
        "trials_by_status": trials.status.value_counts().to_dict(),
        "trial_epochs": int(trials.epochs_run.sum()),
        "trained_epochs": int(trials.trained_epochs.sum()),  # + epochs redone after restarts
        "best_trial": {"trial_id": best.trial_id, config.tune.metric: float(best.best_metric),
                       "params": {k[len(SEARCHED_TRIAL_PREFIX):]: _plain(best[k]) for k in trials.columns if k.startswith(SEARCHED_TRIAL_PREFIX)}},
        "default_trial": {"trial_id": default.trial_id, config.tune.metric: _plain(default.best_metric)},
        "models": models, "prepared_data": inputs["prepared"].dir,
        "data": {"split_sizes": inputs["prepared"].meta["split_sizes"], "categories": inputs["prepared"].num_labels},
        "tokenization": inputs["tokenization"],
        "experiment_path": paths["experiment"], "disk": {**disk, "study_bytes": disk_usage_bytes(paths["experiment"])},
    }
    results_dir = paths["results"]
    with atomic_directory(results_dir) as staging:
        (staging / "study.json").write_text(json.dumps(study, indent=1, default=_plain))
        trials.to_csv(staging / "trials.csv", index=False, float_format="%.5g")
        history.to_csv(staging / "history.csv", index=False, float_format="%.5g")
    log(f"study done in {study['wall_seconds']:.0f}s: best trial {best.trial_id} {config.tune.metric}="
        f"{best.best_metric:.4f} (default {default.best_metric:.4f}); tuned model: {models['tuned']}")
    if evaluate:
        from arxivcls.evaluate import evaluate_study

        evaluate_study(results_dir, address=address, log=log)
    return results_dir


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return value


def _check_writable(directory: Path) -> None:
    """A real write probe (os.access says yes to root even on a read-only mount)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise UserError(f"results directory {directory} is not writable: {e.strerror or e}")


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def prune_study_checkpoints(grid, experiment: str, keep: int, metric: str, mode: str) -> None:
    """Keep only the `keep` best checkpoints of every finished trial's Train run. A trial's driver
    prunes its own run when it finishes, but a trial that ASHA stops is killed before it can, and
    its run still holds the latest checkpoint that Ray keeps for resuming. Errored trials are left
    as they are: `--resume` may retry them from that latest checkpoint."""
    import posixpath

    import pyarrow.fs

    from arxivcls.train import prune_run_dir, rank_by_score, resolve_filesystem, trial_run_name

    filesystem, root = resolve_filesystem(experiment)
    for result in grid:
        frame = result.metrics_dataframe
        if result.error or frame is None or metric not in frame or "checkpoint_path" not in frame:
            continue
        run_dir = f"{root.rstrip('/')}/{trial_run_name(_trial_id(result))}"
        on_disk = {info.base_name for info in filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))}
        reported = frame.dropna(subset=[metric, "checkpoint_path"])
        names = [posixpath.basename(posixpath.normpath(p)) for p in reported.checkpoint_path]
        ranked = rank_by_score([(n, v) for n, v in zip(names, reported[metric]) if n in on_disk], mode)
        if ranked:
            prune_run_dir(filesystem, run_dir, {n for n, _ in ranked[:keep]})


def collect_trials(grid, config: Config) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv (one row per trial) and history.csv (one row per trial-epoch) from a ResultGrid."""
    from arxivcls.train import checkpoint_exists, is_local, newest_checkpoint, rank_by_score, trial_run_name

    metric, mode, experiment = config.tune.metric, config.tune.mode, study_paths(config)["experiment"]
    rows, histories = [], []
    for result in grid:
        frame = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        trial_id = _trial_id(result)
        params = {f"{SEARCHED_TRIAL_PREFIX}{k}": v for k, v in (result.config or {}).items()}
        row = {"trial_id": trial_id, **params, "status": "error" if result.error else "completed",
               "epochs_run": 0, "trained_epochs": 0, "planned_epochs": None, "best_metric": float("nan"), "best_checkpoint": None,
               "seconds": (result.metrics or {}).get("time_total_s"), "error": str(result.error).splitlines()[0][:200] if result.error else ""}
        if not frame.empty and metric in frame:
            # one row per epoch: a replayed result (see trial_driver) repeats epochs already reported;
            # keep the row that names the epoch's checkpoint, if one does
            frame = frame.dropna(subset=[metric])
            has_checkpoint = frame.get("checkpoint_path", pd.Series(None, index=frame.index)).notna()
            frame = (frame.assign(_has_checkpoint=has_checkpoint).sort_values(["epoch", "_has_checkpoint"], kind="stable")
                     .drop_duplicates(subset="epoch", keep="last").drop(columns="_has_checkpoint"))
            last = frame.iloc[-1]
            # the best epoch whose checkpoint is still on disk (only improving epochs have one)
            kept = frame[[checkpoint_exists(p) for p in frame.get("checkpoint_path", pd.Series([None] * len(frame)))]]
            candidates = kept if not kept.empty else frame
            best_index = rank_by_score(list(zip(candidates.index, candidates[metric])), mode)[0][0]
            best_row = candidates.loc[best_index]
            if kept.empty and is_local(experiment):  # the reports naming its checkpoints were lost (study killed)
                newest = newest_checkpoint(Path(experiment) / trial_run_name(trial_id))
                best_row = best_row.copy()
                best_row["checkpoint_path"] = str(newest) if newest else None
            trained = frame.trained_epochs.max() if "trained_epochs" in frame else frame.epoch.max()
            row.update(epochs_run=int(frame.epoch.max()), trained_epochs=int(trained),
                       planned_epochs=int(last.get("planned_epochs", 0) or 0),
                       best_metric=float(best_row[metric]), best_epoch=int(best_row.epoch),
                       best_checkpoint=best_row.get("checkpoint_path"),
                       **{f"best_{k}": float(best_row[k]) for k in ("val_accuracy", "val_weighted_f1", "val_macro_f1", "val_loss") if k in best_row})
            if not result.error:
                if last.get("stopped_by_patience"):
                    row["status"] = "stopped_by_patience"
                elif row["epochs_run"] < row["planned_epochs"]:
                    row["status"] = "stopped_by_asha" if config.tune.scheduler == "asha" else "stopped_by_halving"
            keep = [c for c in dict.fromkeys(("epoch", metric, "val_loss", "val_accuracy", "val_macro_f1", "val_weighted_f1",
                                              "train_loss", "epoch_seconds")) if c in frame]
            histories.append(frame[keep].assign(trial_id=trial_id, status=row["status"]))
        rows.append(row)
    trials = pd.DataFrame(rows)
    default = default_point(config.tune.search_space, config.train)
    trials.insert(1, "is_default", [all(_same(row.get(f"{SEARCHED_TRIAL_PREFIX}{k}"), v) for k, v in default.items()) for row in rows])
    trials = trials.sort_values("is_default", ascending=False, kind="stable")  # points_to_evaluate: trial 1
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["trial_id", "epoch", metric, "status"])
    return trials.reset_index(drop=True), history
