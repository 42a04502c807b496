from types import SimpleNamespace

import pyarrow.fs
import pytest

from arxivcls.rundir import prune_checkpoints


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

    from arxivcls.trials import prune_study_checkpoints

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


def write_fake_checkpoint(epoch: int):
    def write(directory):
        directory.mkdir()
        (directory / "model.safetensors").write_text(f"epoch {epoch}")
    return write


def checkpoint_dirs(run):
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint_"))


def test_publish_never_holds_more_than_keep_and_keeps_the_newest(tmp_path):
    from arxivcls.rundir import newest_checkpoint, publish_checkpoint

    for keep in (1, 2):
        run = tmp_path / f"train-keep{keep}"
        published = []
        for epoch in range(1, 5):
            published.append(publish_checkpoint(run, write_fake_checkpoint(epoch), keep).name)
            assert sorted(p.name for p in run.iterdir()) == published[-keep:]  # the newest `keep`, nothing hidden
        assert (newest_checkpoint(run) / "model.safetensors").read_text() == "epoch 4"


def test_a_crash_while_writing_keeps_the_old_checkpoint(tmp_path):
    from arxivcls.rundir import newest_checkpoint, publish_checkpoint

    run = tmp_path / "train-x"
    old = publish_checkpoint(run, write_fake_checkpoint(1), keep=1)

    def crash(directory):
        directory.mkdir()
        (directory / "model.safetensors").write_text("half")
        raise KeyboardInterrupt  # the process dies mid-write

    with pytest.raises(KeyboardInterrupt):
        publish_checkpoint(run, crash, keep=1)
    assert checkpoint_dirs(run) == [old.name] and newest_checkpoint(run) == old  # the half-written one is hidden
    new = publish_checkpoint(run, write_fake_checkpoint(2), keep=1)  # the next publish tidies up
    assert sorted(p.name for p in run.iterdir()) == [new.name]


@pytest.mark.parametrize("crash_after", ["retire", "rename"])
def test_a_crash_mid_swap_resumes_from_the_new_checkpoint(tmp_path, monkeypatch, crash_after):
    """keep=1: the old checkpoint is moved aside, then the new one renamed into place, then the
    old one deleted. A crash after either rename still leaves the new checkpoint to resume from."""
    import pathlib

    from arxivcls.rundir import newest_checkpoint, publish_checkpoint

    run = tmp_path / "train-x"
    publish_checkpoint(run, write_fake_checkpoint(1), keep=1)
    renames = {"retire": 1, "rename": 2}[crash_after]
    real_rename, calls = pathlib.Path.rename, []

    def rename_then_die(self, target):
        moved = real_rename(self, target)
        calls.append(target)
        if len(calls) == renames:
            raise KeyboardInterrupt
        return moved

    monkeypatch.setattr(pathlib.Path, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        publish_checkpoint(run, write_fake_checkpoint(2), keep=1)
    monkeypatch.undo()
    assert len(checkpoint_dirs(run)) <= 1
    assert (newest_checkpoint(run) / "model.safetensors").read_text() == "epoch 2"
    third = publish_checkpoint(run, write_fake_checkpoint(3), keep=1)
    assert sorted(p.name for p in run.iterdir()) == [third.name]
