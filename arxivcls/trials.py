"""A finished study's trials, from Tune's ResultGrid: the rows of trials.csv and history.csv, and
every trial's Train run pruned to its best checkpoints."""
from pathlib import Path

import pandas as pd

from arxivcls.config import Config
from arxivcls.rundir import RunDir, checkpoint_exists, prune_run_dir, rank_by_score, resolve_filesystem

SEARCHED_TRIAL_PREFIX = "p_"  # hyperparameter columns in trials.csv


def _trial_id(result) -> str:
    return (result.metrics or {}).get("trial_id") or Path(result.path).name


def prune_study_checkpoints(grid, experiment: str, keep: int, metric: str, mode: str) -> None:
    """Keep only the `keep` best checkpoints of every finished trial's Train run. A trial's driver
    prunes its own run when it finishes, but a trial that ASHA stops is killed before it can, and
    its run still holds the latest checkpoint that Ray keeps for resuming. Errored trials are left
    as they are: `--resume` may retry them from that latest checkpoint."""
    import posixpath

    import pyarrow.fs

    filesystem, root = resolve_filesystem(experiment)
    for result in grid:
        frame = result.metrics_dataframe
        if result.error or frame is None or metric not in frame or "checkpoint_path" not in frame:
            continue
        run_dir = f"{root.rstrip('/')}/{RunDir.of_trial(experiment, _trial_id(result)).name}"
        on_disk = {info.base_name for info in filesystem.get_file_info(pyarrow.fs.FileSelector(run_dir, allow_not_found=True))}
        reported = frame.dropna(subset=[metric, "checkpoint_path"])
        names = [posixpath.basename(posixpath.normpath(p)) for p in reported.checkpoint_path]
        ranked = rank_by_score([(n, v) for n, v in zip(names, reported[metric]) if n in on_disk], mode)
        if ranked:
            prune_run_dir(filesystem, run_dir, {n for n, _ in ranked[:keep]})


# ---------------------------------------------------------------- trials.csv and history.csv

def collect_trials(grid, config: Config, experiment: str, default_trial_id: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv (one row per trial, the default trial first) and history.csv (one row per
    trial-epoch) from a ResultGrid."""
    metric = config.tune.metric
    rows, histories = [], []
    for result in grid:
        row, history = trial_row(result, config, experiment)
        rows.append(row)
        if history is not None:
            histories.append(history)
    trials = pd.DataFrame(rows)
    trials.insert(1, "is_default", [row["trial_id"] == default_trial_id for row in rows])
    trials = trials.sort_values("is_default", ascending=False, kind="stable")
    history = pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["trial_id", "epoch", metric, "status"])
    return trials.reset_index(drop=True), history


def trial_row(result, config: Config, experiment: str) -> tuple[dict, pd.DataFrame | None]:
    """One trial's row of trials.csv, and its epochs for history.csv (None before any report)."""
    metric = config.tune.metric
    frame = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
    trial_id = _trial_id(result)
    params = {f"{SEARCHED_TRIAL_PREFIX}{k}": v for k, v in (result.config or {}).items()}
    row = {"trial_id": trial_id, **params, "status": "error" if result.error else "completed",
           "epochs_run": 0, "trained_epochs": 0, "planned_epochs": None, "best_metric": float("nan"), "best_checkpoint": None,
           "seconds": (result.metrics or {}).get("time_total_s"), "error": str(result.error).splitlines()[0][:200] if result.error else ""}
    if frame.empty or metric not in frame:
        return row, None
    frame = epoch_rows(frame, metric)
    last = frame.iloc[-1]
    best_row = best_epoch_row(frame, metric, config.tune.mode, RunDir.of_trial(experiment, trial_id))
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
    return row, frame[keep].assign(trial_id=trial_id, status=row["status"])


def epoch_rows(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per epoch: a replayed result (see trial_driver) repeats epochs already reported;
    keep the row that names the epoch's checkpoint, if one does."""
    frame = frame.dropna(subset=[metric])
    has_checkpoint = frame.get("checkpoint_path", pd.Series(None, index=frame.index)).notna()
    return (frame.assign(_has_checkpoint=has_checkpoint).sort_values(["epoch", "_has_checkpoint"], kind="stable")
            .drop_duplicates(subset="epoch", keep="last").drop(columns="_has_checkpoint"))


def best_epoch_row(frame: pd.DataFrame, metric: str, mode: str, run: RunDir) -> pd.Series:
    """The best epoch whose checkpoint is still on disk (only improving epochs have one)."""
    kept = frame[[checkpoint_exists(p) for p in frame.get("checkpoint_path", pd.Series([None] * len(frame)))]]
    candidates = kept if not kept.empty else frame
    best_row = candidates.loc[rank_by_score(list(zip(candidates.index, candidates[metric])), mode)[0][0]]
    if kept.empty and run.local:  # the reports naming its checkpoints were lost (study killed)
        newest = run.newest_checkpoint()
        best_row = best_row.copy()
        best_row["checkpoint_path"] = str(newest) if newest else None
    return best_row
