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
