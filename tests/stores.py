"""What each store of a finished study holds, read back trial by trial: arxivcls's trials.csv,
history.csv and study.json, the Optuna storage, TensorBoard's event files and MLflow's runs.
`disagreements(...)` lists every place they differ (empty when they agree)."""
import json
import struct
from pathlib import Path

import pandas as pd

from arxivcls.trials import OPTUNA_STATE


def tensorboard_values(trial_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of one scalar in a trial's event files (TFRecord framing: length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    values = {}
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.tag == tag:
                    values.setdefault(int(event.step), float(value.simple_value))
    return values


def optuna_trials(experiment: Path, study: str) -> dict[str, dict]:
    import optuna

    stored = optuna.load_study(study_name=study, storage=f"sqlite:///{experiment / 'search' / 'optuna.db'}")
    return {t.user_attrs["ray_trial_id"]: {"state": t.state.name, "value": t.value, "epochs": dict(t.intermediate_values)}
            for t in stored.get_trials(deepcopy=False) if "ray_trial_id" in t.user_attrs}, stored


def mlflow_values(uri: str, experiment_name: str, metric: str) -> dict[str, dict[int, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    return {run.data.tags["trial_name"].rsplit("_", 1)[-1]: {m.step: m.value for m in client.get_metric_history(run.info.run_id, metric)}
            for run in runs}


def close(a, b, tol=1e-4) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


def same_curve(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(close(a[k], b[k]) for k in a)


def disagreements(results: Path, experiment: Path, metric: str = "val_macro_f1", mlflow_uri: str | None = None) -> list[str]:
    study = json.loads((results / "study.json").read_text())
    trials = pd.read_csv(results / "trials.csv")
    history = pd.read_csv(results / "history.csv")
    stored, optuna_study = optuna_trials(experiment, study["study"])
    tracked = mlflow_values(mlflow_uri, study["study"], metric) if mlflow_uri else None
    problems = []
    if sorted(stored) != sorted(trials.trial_id):
        problems.append(f"optuna holds trials {sorted(stored)}, trials.csv {sorted(trials.trial_id)}")
    for trial in trials.itertuples():
        epochs = history[history.trial_id == trial.trial_id].set_index("epoch")[metric].to_dict()
        where = f"trial {trial.trial_id} ({trial.status})"
        if len(epochs) != trial.epochs_run or sorted(epochs) != list(range(1, trial.epochs_run + 1)):
            problems.append(f"{where}: history.csv epochs {sorted(epochs)}, trials.csv epochs_run {trial.epochs_run}")
        if not close(max(epochs.values()), trial.best_metric):
            problems.append(f"{where}: best of history.csv {max(epochs.values())}, trials.csv {trial.best_metric}")
        held = stored.get(trial.trial_id)
        if held is None:
            continue
        want_value = trial.best_metric if OPTUNA_STATE[trial.status] == "COMPLETE" else epochs[max(epochs)]
        if held["state"] != OPTUNA_STATE[trial.status] or not close(held["value"], want_value):
            problems.append(f"{where}: optuna {held['state']} {held['value']}, trials.csv says {OPTUNA_STATE[trial.status]} {want_value}")
        if not same_curve(held["epochs"], epochs):
            problems.append(f"{where}: optuna epochs {held['epochs']}, history.csv {epochs}")
        board = tensorboard_values(experiment / f"trial_driver_{trial.trial_id}", f"ray/tune/{metric}")
        if not same_curve(board, epochs):
            problems.append(f"{where}: tensorboard {board}, history.csv {epochs}")
        if tracked is not None and not same_curve(tracked.get(trial.trial_id, {}), epochs):
            problems.append(f"{where}: mlflow {tracked.get(trial.trial_id)}, history.csv {epochs}")
    best = study["best_trial"]
    if optuna_study.best_trial.user_attrs.get("ray_trial_id") != best["trial_id"] or not close(optuna_study.best_value, best[metric]):
        problems.append(f"best trial: optuna {optuna_study.best_trial.user_attrs.get('ray_trial_id')} {optuna_study.best_value}, "
                        f"study.json {best['trial_id']} {best[metric]}")
    if optuna_study.metric_names != [metric]:
        problems.append(f"optuna's objective is named {optuna_study.metric_names}, not {metric}")
    return problems
