"""A Ray Tune study: OptunaSearch (TPE) proposes, ASHA stops early, each trial is a Ray Train run
whose checkpoints Ray keeps.

Data is prepared and tokenized once on the driver and shared with every trial through the object store.
"""
import json
import math
import numbers
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd

from arxivcls.config import Config, TrainConfig
from arxivcls.errors import UserError
from arxivcls.files import atomic_directory
from arxivcls.inputs import TrialInputs
from arxivcls.checkpoints import export_model, storage_uri
from arxivcls.trials import SEARCHED_TRIAL_PREFIX, collect_trials

# The per-trial driver only waits on its Train run: it holds no CPU (Tune needs a non-empty
# request, so it asks for 1 MiB of memory). A CPU per idle driver can deadlock trials that need
# every CPU: each driver holds one and no worker group can start.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 2**20}
# Files of the study itself, each in a subdirectory of the study's: Tune copies every .json file at
# the top of it to its staging directory on --resume and later copies them back, which would put
# old contents back over the new.
DEFAULT_TRIAL = ("search", "default_trial_id")  # the trial the searcher gave the config's own values
MLFLOW_DB = ("mlflow", "mlflow.db")  # tune.tracking: mlflow's store when no tracking URI is given


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


def checkpoints_kept(num_samples: int, keep: int, concurrency: int) -> int:
    """The most checkpoints a study holds at once: Ray keeps each trial's `keep` best and its latest,
    and a running trial writes one more before Ray deletes one (docs/design.md, Checkpoints)."""
    return num_samples * (keep + 1) + concurrency


def preflight_checkpoints(config: Config) -> int:
    """The checkpoints the disk preflight budgets. It runs before Ray starts, when the concurrency
    is not known: tune.max_concurrent, or every trial at once."""
    return checkpoints_kept(config.tune.num_samples, config.train.checkpoint_keep,
                            config.tune.max_concurrent or config.tune.num_samples)


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

def trial_driver(config: dict, base: TrialInputs) -> None:
    """Runs inside a Tune trial: one Ray Train run with this trial's hyperparameters. The run is named
    by the trial, so a retried or resumed trial finds its run and Ray resumes it from its latest checkpoint."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from arxivcls.train import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    build_trainer(base.with_params(config), name=f"train-{trial_id}", callbacks=[TuneReportCallback()]).fit()


# ---------------------------------------------------------------- the search and early-stopping rule

def make_scheduler(config: Config, max_epochs: int, concurrency: int, experiment: str):
    """(search algorithm, Tune scheduler): Optuna's TPE behind a concurrency limit, and Ray's ASHA."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from arxivcls.search import make_searcher, optuna_storage_url

    tune_cfg = config.tune
    searcher = make_searcher(config, on_default_trial=partial(write_default_trial, experiment),
                             storage_url=optuna_storage_url(experiment))
    return (ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            ASHAScheduler(time_attr="epoch", metric=tune_cfg.metric, mode=tune_cfg.mode, max_t=max_epochs,
                          grace_period=tune_cfg.grace_period, reduction_factor=tune_cfg.reduction_factor))


def write_default_trial(experiment: str, trial_id: str) -> None:
    from arxivcls.checkpoints import is_local, resolve_filesystem
    from arxivcls.files import atomic_write_text

    path = f"{experiment.rstrip('/')}/{'/'.join(DEFAULT_TRIAL)}"
    if is_local(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path), trial_id)
        return
    fs, inside = resolve_filesystem(path)
    with fs.open_output_stream(inside) as out:  # object stores publish a whole object at close
        out.write(trial_id.encode())


def make_tuner(config: Config, trial: TrialInputs, concurrency: int, paths: dict, resume: bool, log=print):
    from ray import tune

    from arxivcls.progress import StudyProgress
    from arxivcls.search import tune_search_space

    max_epochs = max(trial.train.epochs, int(config.tune.search_space.get("epochs", {}).get("high", trial.train.epochs)))
    search_alg, scheduler = make_scheduler(config, max_epochs, concurrency, paths["experiment"])
    trainable = tune.with_resources(tune.with_parameters(trial_driver, base=trial), TRIAL_DRIVER_RESOURCES)
    # Save the study's state every 2 s (Ray's "auto" waits >= 10 s): a killed driver then loses
    # at most a couple of seconds of bookkeeping; the state is a few KB.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    # Tune's new output engine prints a `tensorboard --logdir` of Ray's temp dir even at verbose=0;
    # the legacy engine at verbose=0 prints nothing (arxivcls.progress and tracking_lines speak instead)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if resume:
        log(f"resuming study from {paths['experiment']}")
        return tune.Tuner.restore(paths["experiment"], trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=tune_search_space(config.tune.search_space),
        # the search algorithm's ConcurrencyLimiter bounds concurrency (Tune's max_concurrent_trials would repeat it)
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=config.tune.num_samples,
                                    trial_dirname_creator=trial_dirname),
        # verbose=0: StudyProgress prints each trial's start and end instead of Tune's status tables,
        # whose resource line counts only the trial drivers' (0 CPUs)
        # CLIReporter also in a notebook: Tune's notebook reporter clears the cell when a study starts
        run_config=tune.RunConfig(name=config.tune.study, storage_path=paths["storage"], verbose=0,
                                  progress_reporter=tune.CLIReporter(),
                                  failure_config=tune.FailureConfig(max_failures=config.tune.max_failures),
                                  callbacks=[StudyProgress(config.tune.num_samples, config.tune.metric, config.tune.mode),
                                             *tracking_callbacks(config, paths["experiment"])]),
    )


def trial_dirname(trial) -> str:
    """runs/<study>/trial_driver_<trial id>: Tune's default name adds the parameters, rounded."""
    return f"{trial.trainable_name}_{trial.trial_id}"


# ---------------------------------------------------------------- tracking (tune.tracking)

def mlflow_uri(config: Config, experiment: str) -> str:
    if config.tune.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return config.tune.mlflow_uri or os.environ["MLFLOW_TRACKING_URI"]
    if "://" in experiment:
        raise UserError("tune.tracking has mlflow and the study is on remote storage: give tune.mlflow_uri "
                        "(or MLFLOW_TRACKING_URI), e.g. an MLflow server or sqlite:///mlflow.db")
    return f"sqlite:///{Path(experiment, *MLFLOW_DB)}"


def check_tracking(config: Config, experiment: str) -> None:
    """Fail before Ray starts on a tracker whose package is missing."""
    import importlib.util

    for tracker, package in (("tensorboard", "tensorboardX"), ("mlflow", "mlflow")):
        if tracker in config.tune.tracking and importlib.util.find_spec(package) is None:
            raise UserError(f"tune.tracking has {tracker} but {package} is not installed: pip install 'arxivcls[tracking]'")
    if "mlflow" in config.tune.tracking:
        mlflow_uri(config, experiment)


def tracking_callbacks(config: Config, experiment: str) -> list:
    """Ray Tune's logger callbacks for tune.tracking; both log every epoch a trial reports."""
    callbacks = []
    if "tensorboard" in config.tune.tracking:
        callbacks.append(epoch_tensorboard_logger())  # into each trial's directory, synced to the study's
    if "mlflow" in config.tune.tracking:
        uri = mlflow_uri(config, experiment)
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(epoch_mlflow_logger(uri, config.tune.study))
    return callbacks


def epoch_tensorboard_logger():
    """Ray's TBXLoggerCallback stepped by epoch: Tune's training_iteration starts again at 1 when a
    trial's Train run is started again (a retry, --resume), which would log later epochs over earlier ones."""
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.result import TIMESTEPS_TOTAL

    class EpochTBXLogger(TBXLoggerCallback):
        def log_trial_result(self, iteration, trial, result):
            super().log_trial_result(iteration, trial, {**result, TIMESTEPS_TOTAL: result.get("epoch", iteration)})

    return EpochTBXLogger()


def epoch_mlflow_logger(tracking_uri: str, experiment_name: str):
    """Ray's MLflowLoggerCallback (imported here: importing mlflow takes seconds), one MLflow run per
    trial. An epoch's metrics go in one batch (one write to a SQLite store, not one per metric),
    stepped by epoch: a trial restarted by a retry or by --resume counts Tune's iterations from 1 again. A trial continued by --resume goes on in its run."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.utils import flatten_dict

    class EpochMLflowLogger(MLflowLoggerCallback):
        def setup(self, *args, **kwargs):
            super().setup(*args, **kwargs)
            self.client = MlflowClient(self.tracking_uri)

        def log_trial_start(self, trial):
            if trial not in self._trial_runs:
                runs = self.client.search_runs([self.mlflow_util.experiment_id], max_results=1,
                                               filter_string=f"tags.trial_name = '{trial}'")
                if runs:
                    self._trial_runs[trial] = runs[0].info.run_id
            super().log_trial_start(trial)

        def log_trial_result(self, iteration, trial, result):
            step, now = result.get("epoch", iteration), int(time.time() * 1000)
            metrics = [Metric(name, float(value), now, step) for name, value in flatten_dict(result).items()
                       if isinstance(value, numbers.Real)]
            self.client.log_batch(self._trial_runs[trial], metrics=metrics)

    return EpochMLflowLogger(tracking_uri, experiment_name=experiment_name)


def tracking_lines(config: Config, experiment: str) -> list[str]:
    """How to look at the study while and after it runs."""
    from arxivcls.search import optuna_storage_url

    lines = []
    if "tensorboard" in config.tune.tracking:
        lines.append(f"TensorBoard: tensorboard --logdir {experiment}")
    if "mlflow" in config.tune.tracking:
        uri = mlflow_uri(config, experiment)
        lines.append(f"MLflow: mlflow ui --backend-store-uri {uri}" if uri.startswith(("sqlite:", "file:"))
                     else f"MLflow: experiment '{config.tune.study}' at {uri}")
    if optuna_storage_url(experiment):
        lines.append(f"Optuna: optuna-dashboard {optuna_storage_url(experiment)}")
    return lines


# ---------------------------------------------------------------- the study

def study_paths(config: Config) -> dict:
    storage = storage_uri(config.train.storage_path)
    return {"storage": storage, "experiment": f"{storage.rstrip('/')}/{config.tune.study}",
            # absolute: the evaluation's actors may run on other nodes, in other working directories
            "results": Path(config.tune.results_dir).resolve() / config.tune.study,
            "models": Path(config.tune.models_dir).resolve() / config.tune.study}


def _experiment_exists(path: str) -> bool:
    from ray.tune import Tuner

    try:
        return Tuner.can_restore(path)
    except Exception:
        return False


def check_study(config: Config, paths: dict, resume: bool) -> dict:
    """Fail before starting Ray on what would fail later: --resume of nothing, a study that exists,
    an unwritable results directory, a bad model or data path, too little disk. Returns the disk check."""
    from arxivcls.inputs import preflight

    exists = _experiment_exists(paths["experiment"])
    if resume and not exists:
        raise UserError(f"--resume: no study to resume at {paths['experiment']}")
    if not resume and exists:
        raise UserError(f"study '{config.tune.study}' already exists at {paths['experiment']}: "
                        f"add --resume to continue it, or --set tune.study=NEW_NAME")
    check_tracking(config, paths["experiment"])
    _check_writable(paths["results"].parent)
    model_dir = preflight(config)
    return check_disk(paths["storage"], preflight_checkpoints(config) * checkpoint_bytes(model_dir), config.tune.min_free_disk_gb)


def run_study(config: Config, resume: bool = False, address: str | None = None, evaluate: bool = True, log=print,
              warm_start: str | None = None) -> Path:
    """Run (or with `resume`, continue) the study; `warm_start`: an earlier study (name or Optuna
    storage) whose finished trials the new study's searcher starts from."""
    import ray

    from arxivcls.inputs import prepare_inputs
    from arxivcls.raycluster import connect_ray, wait_for_resources

    paths = study_paths(config)
    if resume and warm_start:
        raise UserError("--warm-start starts a new study; a resumed study goes on from its own trials")
    disk = check_study(config, paths, resume)
    source = load_warm_start(warm_start, config, paths) if warm_start else None
    started = time.time()
    connect_ray(address, log=log)
    inputs = prepare_inputs(config, log=log)
    # Train runs live inside the study's directory: one place to find, measure and delete a study.
    trial = inputs.trial.with_train(metric=config.tune.metric, mode=config.tune.mode, storage_path=paths["experiment"])
    available = wait_for_resources(trial_resources(trial.train))
    concurrency = plan_concurrency(available, trial.train, config.tune.num_samples, config.tune.max_concurrent)
    log(f"study '{config.tune.study}': {config.tune.num_samples} trials, {concurrency} at a time "
        f"(each {trial_resources(trial.train)}; free {({k: available[k] for k in ('CPU', 'GPU') if k in available})}), "
        f"objective {config.tune.metric} ({config.tune.mode})")
    if not resume:
        begin_search(config, paths["experiment"], source, log=log)
    for line in tracking_lines(config, paths["experiment"]):
        log(line)
    baseline = baseline_beside_trials(config, inputs, trial) if evaluate else None
    grid = make_tuner(config, trial, concurrency, paths, resume, log=log).fit()

    default_id = read_default_trial(paths["experiment"])
    trials, history = collect_trials(grid, config, default_id)
    if trials.empty or trials.best_metric.isna().all():
        raise UserError(f"no trial reported {config.tune.metric}; the trials' errors and logs are under {paths['experiment']}")
    if not trials.is_default.iloc[0]:
        raise UserError(f"the default configuration's trial did not finish; its error and logs are under {paths['experiment']}")
    best = best_trial(trials, config.tune.mode)
    default = trials.iloc[0]
    models = {"tuned": export_model(best.best_checkpoint, str(paths["models"] / "tuned")),
              "default": export_model(default.best_checkpoint, str(paths["models"] / "default"))}
    study = study_record(config, trials, best, default, models=models, inputs=inputs, train=trial.train, paths=paths,
                         available=available, concurrency=concurrency, started=started, disk=disk)
    write_results(paths["results"], study, trials, history)
    log(f"study done in {study['wall_seconds']:.0f}s: best trial {best.trial_id} {config.tune.metric}="
        f"{best.best_metric:.4f} (default {default.best_metric:.4f}); tuned model: {models['tuned']}")
    if evaluate:
        from arxivcls.evaluate import evaluate_study

        # It sizes its actor pool by the free resources: wait for the trials' (on the nodes still alive).
        alive = ray.cluster_resources()
        wait_for_resources({k: min(available[k], alive.get(k, 0.0)) for k in ("CPU", "GPU") if k in available})
        evaluate_study(paths["results"], address=address, log=log, baseline_search=baseline.result() if baseline else None)
    failed = trials[trials.status == "error"]
    if not failed.empty:  # the results are written; the exit code still says that trials failed
        raise UserError(f"{len(failed)} of {len(trials)} trials failed ({', '.join(failed.trial_id)}); "
                        f"their errors and logs are under {paths['experiment']}/trial_driver_<id>/")
    return paths["results"]


def baseline_beside_trials(config: Config, inputs, trial: TrialInputs):
    """When the trials train on GPUs, the baseline's search (Ray tasks of one CPU each) runs on the
    CPUs meanwhile; a future of its result. On CPUs it would only wait for the trials' CPUs: the
    evaluation stage runs it then."""
    if not config.eval.baseline or "GPU" not in trial_resources(trial.train):
        return None
    from concurrent.futures import ThreadPoolExecutor

    from arxivcls.baseline_search import search_study_baseline

    pool = ThreadPoolExecutor(1)
    future = pool.submit(search_study_baseline, inputs.prepared, config.to_dict(), log=lambda *_: None)
    pool.shutdown(wait=False)  # the thread ends with the search; run_study waits on the future
    return future


def read_default_trial(experiment: str) -> str | None:
    import pyarrow.fs

    from arxivcls.checkpoints import resolve_filesystem

    fs, path = resolve_filesystem(f"{experiment.rstrip('/')}/{'/'.join(DEFAULT_TRIAL)}")
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def best_trial(trials: pd.DataFrame, mode: str):
    """The best of the trials that finished (COMPLETE in Optuna: ran their epochs or stopped by
    patience), as Optuna's best_trial; the best stopped trial only if none finished."""
    scored = trials.dropna(subset=["best_metric"])
    finished = scored[scored.status.isin(["completed", "stopped_by_patience"])]
    return (finished if not finished.empty else scored).sort_values("best_metric", ascending=mode == "min", kind="stable").iloc[0]


def load_warm_start(source: str, config: Config, paths: dict):
    """The earlier study that --warm-start names, checked before Ray starts."""
    from arxivcls.search import load_source_study, optuna_storage_url

    if optuna_storage_url(paths["experiment"]) is None:
        raise UserError("--warm-start needs the study's Optuna storage on local disk; this study is on "
                        f"{paths['storage']}")
    study = load_source_study(source, paths["storage"])
    if study.study_name == config.tune.study:
        raise UserError(f"--warm-start {source}: that study is named '{config.tune.study}' like this one; "
                        f"give this one another name (--set tune.study=NEW_NAME)")
    return study


def begin_search(config: Config, experiment: str, warm_start_from, log=print) -> None:
    """A new study's Optuna study in its storage, started from an earlier study's finished trials."""
    from arxivcls.search import begin_optuna_study, optuna_storage_url, warm_start

    url = optuna_storage_url(experiment)
    if url is None:
        return
    study = begin_optuna_study(config, url)
    if warm_start_from is not None:
        added, left_out = warm_start(study, warm_start_from, config.tune.search_space, config.tune.metric)
        log(f"warm start: {added} finished trials of study '{warm_start_from.study_name}' added to the search"
            + (f" ({left_out} left out: a parameter outside this study's search space)" if left_out else ""))


def study_record(config: Config, trials: pd.DataFrame, best, default, *, models: dict, inputs, train: TrainConfig,
                 paths: dict, available: dict, concurrency: int, started: float, disk: dict) -> dict:
    """study.json: what the study ran on, what it spent, and what it found."""
    import ray

    from arxivcls.search import optuna_storage_url

    metric = config.tune.metric
    params = {k[len(SEARCHED_TRIAL_PREFIX):]: _plain(best[k]) for k in trials.columns if k.startswith(SEARCHED_TRIAL_PREFIX)}
    return {
        "study": config.tune.study, "config": config.to_dict(), "ray_version": ray.__version__,
        "resources_seen": {k: v for k, v in available.items() if not k.startswith("node:")},
        "concurrency": concurrency, "trial_resources": trial_resources(train),
        "wall_seconds": round(time.time() - started, 1), "num_trials": len(trials),
        "trials_by_status": trials.status.value_counts().to_dict(),
        "trial_epochs": int(trials.epochs_run.sum()),
        "trained_epochs": int(trials.trained_epochs.sum()),  # + epochs redone after restarts
        "best_trial": {"trial_id": best.trial_id, metric: float(best.best_metric), "params": params},
        "default_trial": {"trial_id": default.trial_id, metric: _plain(default.best_metric)},
        "models": models, "prepared_data": inputs.prepared.dir,
        "data": {"split_sizes": inputs.prepared.meta["split_sizes"], "categories": inputs.prepared.num_labels},
        "tokenization": inputs.tokenization,
        "experiment_path": paths["experiment"], "optuna_storage": optuna_storage_url(paths["experiment"]),
        "disk": {**disk, "study_bytes": disk_usage_bytes(paths["experiment"])},
    }


def write_results(results_dir: Path, study: dict, trials: pd.DataFrame, history: pd.DataFrame) -> None:
    with atomic_directory(results_dir) as staging:
        (staging / "study.json").write_text(json.dumps(study, indent=1, default=_plain))
        trials.to_csv(staging / "trials.csv", index=False, float_format="%.5g")
        history.to_csv(staging / "history.csv", index=False, float_format="%.5g")


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    return value


def _check_writable(directory: Path) -> None:
    """A real write probe (os.access says yes to root even on a read-only mount) in the directory,
    or in its nearest existing parent: a study that fails its checks leaves no empty directory."""
    probe = directory.resolve()
    while not probe.exists():
        probe = probe.parent
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise UserError(f"results directory {directory} is not writable: {e.strerror or e}")
