from types import SimpleNamespace

import pyarrow.fs

from arxivcls.train import prune_checkpoints


def test_prune_keeps_only_the_best_even_checkpoints_the_result_does_not_list(tmp_path):
    run = tmp_path / "train-abc"
    for name in ("checkpoint_1", "checkpoint_2", "checkpoint_3"):
        (run / name).mkdir(parents=True)
        (run / name / "model.safetensors").write_bytes(b"x")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    local = pyarrow.fs.LocalFileSystem()

    def checkpoint(name):
        return SimpleNamespace(path=str(run / name), filesystem=local)

    # Ray listed epochs 1 and 2 only; epoch 3 (the latest, kept by Ray for resuming) is not listed
    result = SimpleNamespace(best_checkpoints=[(checkpoint("checkpoint_1"), {"val_macro_f1": 0.2}),
                                               (checkpoint("checkpoint_2"), {"val_macro_f1": 0.5})])
    prune_checkpoints(result, keep=1, metric="val_macro_f1", mode="max")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_2", "checkpoint_manager_snapshot.json"]


def test_prune_min_mode_and_ties_keep_the_later(tmp_path):
    local = pyarrow.fs.LocalFileSystem()
    names = ["checkpoint_1", "checkpoint_2", "checkpoint_3"]
    for name in names:
        (tmp_path / name).mkdir()
    listed = [(SimpleNamespace(path=str(tmp_path / n), filesystem=local), {"val_loss": v}) for n, v in zip(names, [0.3, 0.3, 0.9])]
    prune_checkpoints(SimpleNamespace(best_checkpoints=listed), keep=1, metric="val_loss", mode="min")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2"]


def test_study_prune_trims_a_stopped_trials_run_and_leaves_errored_trials_alone(tmp_path):
    import pandas as pd

    from arxivcls.tuning import prune_study_checkpoints

    experiment = tmp_path / "study"
    for trial in ("stopped", "errored"):
        for name in ("checkpoint_1", "checkpoint_2", "checkpoint_3"):
            (experiment / f"train-{trial}" / name).mkdir(parents=True)

    def result(trial, error=None):
        # what Tune recorded: one row per epoch, its checkpoint path; epoch 3 was reported twice (a replay)
        frame = pd.DataFrame({"epoch": [1, 2, 3, 3], "val_macro_f1": [0.4, 0.1, 0.3, 0.3],
                              "checkpoint_path": [str(experiment / f"train-{trial}" / f"checkpoint_{e}") for e in (1, 2, 3, 3)]})
        return SimpleNamespace(metrics={"trial_id": trial}, path=str(tmp_path / trial), error=error, metrics_dataframe=frame)

    grid = [result("stopped"), result("errored", error=RuntimeError("worker died"))]
    prune_study_checkpoints(grid, str(experiment), keep=2, metric="val_macro_f1", mode="max")
    assert sorted(p.name for p in (experiment / "train-stopped").iterdir()) == ["checkpoint_1", "checkpoint_3"]
    assert len(list((experiment / "train-errored").iterdir())) == 3  # may be resumed from its latest
    prune_study_checkpoints(grid, str(experiment), keep=1, metric="val_macro_f1", mode="max")
    assert [p.name for p in (experiment / "train-stopped").iterdir()] == ["checkpoint_1"]
