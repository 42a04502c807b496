"""A finished study's trials, from Tune's ResultGrid: the rows of trials.csv and history.csv."""
from pathlib import Path

import pandas as pd

from arxivcls.checkpoints import checkpoint_exists
from arxivcls.config import Config
from arxivcls.search import stopped_by_scheduler

SEARCHED_TRIAL_PREFIX = "p_"  # hyperparameter columns in trials.csv
# How a trial ended, and what Optuna's storage holds for it
OPTUNA_STATE = {"completed": "COMPLETE", "stopped_by_patience": "COMPLETE", "stopped_by_asha": "PRUNED", "error": "FAIL"}


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name.removeprefix("trial_driver_")


def collect_trials(grid, config: Config, default_trial_id: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv (one row per trial, the default trial first) and history.csv (one row per
    trial-epoch) from a ResultGrid."""
    metric = config.tune.metric
    rows, histories = [], []
    for result in grid:
        row, history = trial_row(result, config)
        rows.append(row)
        if history is not None:
            histories.append(history)
    trials = pd.DataFrame(rows)
    trials.insert(1, "is_default", [row["trial_id"] == default_trial_id for row in rows])
    trials = trials.sort_values("is_default", ascending=False, kind="stable")
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["trial_id", "epoch", metric, "status"])
    return trials.reset_index(drop=True), history


def trial_row(result, config: Config) -> tuple[dict, pd.DataFrame | None]:
    """One trial's row of trials.csv, and its epochs for history.csv (None before any report)."""
    metric = config.tune.metric
    frame = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    trial_id = _trial_id(result)
    params = {f"{SEARCHED_TRIAL_PREFIX}{k}": v for k, v in (result.config or {}).items()}
    row = {"trial_id": trial_id, **params, "status": "error" if result.error else "completed",
           "epochs_run": 0, "trained_epochs": 0, "planned_epochs": None, "best_metric": float("nan"), "best_checkpoint": None,
           "node_ip": None, "seconds": (result.metrics or {}).get("time_total_s"),
           "error": str(result.error).splitlines()[0][:200] if result.error else ""}
    if frame.empty or metric not in frame:
        return row, None
    frame = epoch_rows(frame, metric)
    last = frame.iloc[-1]
    best_row = best_epoch_row(frame, metric, config.tune.mode)
    trained = frame.trained_epochs.max() if "trained_epochs" in frame else frame.epoch.max()
    row.update(epochs_run=int(frame.epoch.max()), trained_epochs=int(trained),
               planned_epochs=int(last.get("planned_epochs", 0) or 0),
               best_metric=float(best_row[metric]), best_epoch=int(best_row.epoch),
               best_checkpoint=best_row.get("checkpoint_path"), node_ip=last.get("worker_node_ip"),  # Tune's own node_ip is the trial driver's
               **{f"best_{k}": float(best_row[k]) for k in ("val_accuracy", "val_weighted_f1", "val_macro_f1", "val_loss") if k in best_row})
    if not result.error:
        if last.get("stopped_by_patience"):
            row["status"] = "stopped_by_patience"
        elif stopped_by_scheduler(last.to_dict()):
            row["status"] = "stopped_by_asha"
    keep = [c for c in dict.fromkeys(("epoch", metric, "val_loss", "val_accuracy", "val_macro_f1", "val_weighted_f1",
                                      "train_loss", "epoch_seconds")) if c in frame]
    return row, frame[keep].assign(trial_id=trial_id, status=row["status"])


def epoch_rows(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per epoch: a finished run started again (a resumed study) reports its last epoch again."""
    return frame.dropna(subset=[metric]).drop_duplicates(subset="epoch", keep="first").sort_values("epoch", kind="stable")


def best_epoch_row(frame: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The best epoch whose checkpoint Ray kept (the best `checkpoint_keep` and the latest); among
    equal scores the later epoch."""
    kept = frame[[checkpoint_exists(p) for p in frame.get("checkpoint_path", pd.Series([None] * len(frame), index=frame.index))]]
    candidates = kept if not kept.empty else frame
    sign = 1 if mode == "max" else -1
    return candidates.loc[(sign * candidates[metric]).iloc[::-1].idxmax()]
