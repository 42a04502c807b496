"""The real Ray Train worker loop on CPU with a tiny BERT (slow: starts Ray)."""
import dataclasses
import json
from pathlib import Path

import pytest

from arxivcls.config import Config, DataConfig, ModelConfig, TrainConfig
from arxivcls.inputs import prepare_inputs
from arxivcls.rundir import best_checkpoint, export_model, last_reported_metrics
from arxivcls.train import build_trainer

pytestmark = pytest.mark.slow


def tiny_config(papers_file, tiny_bert, tmp_path, **train) -> Config:
    return Config(
        data=DataConfig(path=str(papers_file), max_length=64, cache_dir=str(tmp_path / "cache")),
        model=ModelConfig(name=str(tiny_bert)),
        train=TrainConfig(**{"learning_rate": 2e-3, "batch_size": 16, "epochs": 3, "warmup_ratio": 0.1,
                             "storage_path": str(tmp_path / "runs"), "eval_batch_size": 128, **train}),
    )


def test_tiny_bert_lowers_validation_loss_and_saves_hf_checkpoint(ray_local, papers_file, tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    config = tiny_config(papers_file, tiny_bert, tmp_path, checkpoint_keep=3)
    inputs = prepare_inputs(config, log=lambda *_: None)
    result = build_trainer(inputs.trial, name="tiny").fit()
    checkpointed = result.metrics_dataframe.sort_values("epoch")  # one row per checkpoint: the improving epochs
    assert checkpointed.epoch.iloc[0] == 1 and checkpointed.val_macro_f1.is_monotonic_increasing
    last = last_reported_metrics(config.train.storage_path, "tiny")
    assert last["epoch"] == 3
    assert last["val_loss"] < checkpointed.val_loss.iloc[0] - 0.05
    assert last["val_accuracy"] > 1.5 / inputs.prepared.num_labels  # better than chance
    for key in ("val_macro_f1", "val_weighted_f1", "val_macro_precision", "val_weighted_recall", "train_loss"):
        assert key in last

    checkpoint, value = best_checkpoint(result, "val_macro_f1", "max")
    exported = Path(export_model(checkpoint.path, str(tmp_path / "model")))
    assert (exported / "model.safetensors").is_file() and not (exported / "training_state.pt").exists()
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    assert model.config.id2label == inputs.prepared.id2label
    assert json.loads((exported / "metrics.json").read_text())["val_macro_f1"] == pytest.approx(value)


def test_patience_stops_a_run_that_does_not_improve(ray_local, papers_file, tiny_bert, tmp_path):
    config = tiny_config(papers_file, tiny_bert, tmp_path, learning_rate=1e-9, epochs=6, patience=2, metric="val_loss", mode="min")
    inputs = prepare_inputs(config, log=lambda *_: None)
    build_trainer(inputs.trial, name="patience").fit()
    # lr ~0: the loss barely moves; it "improves" by float noise at most once or twice, then stops early
    last = last_reported_metrics(config.train.storage_path, "patience")
    assert last["stopped_by_patience"] == 1 and last["epoch"] < 6


class EpochsToFile:
    """A Ray Train callback (it runs in the controller actor) that appends each reported epoch to a file."""

    def __new__(cls, path):
        from ray.train.v2.api.callback import UserCallback

        class _Recorder(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                with open(path, "a") as f:
                    f.write(f"{metrics[0]['epoch']} {int(checkpoint is not None)}\n")

        return _Recorder()


def test_only_improving_epochs_are_checkpointed_and_a_restart_does_not_report_epochs_again(
        ray_local, papers_file, tiny_bert, tmp_path):
    # lr ~0: predictions never change, so macro F1 improves at epoch 1 only
    config = tiny_config(papers_file, tiny_bert, tmp_path, learning_rate=1e-9, epochs=3, patience=10)
    inputs = prepare_inputs(config, log=lambda *_: None)
    reports = tmp_path / "reports.txt"
    build_trainer(inputs.trial, name="redo", callbacks=[EpochsToFile(reports)]).fit()
    assert reports.read_text().split("\n")[:3] == ["1 1", "2 0", "3 0"]
    run = tmp_path / "runs" / "redo"
    assert len(list(run.glob("checkpoint_2*"))) == 1  # Ray's "latest" is the best: keep=1 on disk, not 2
    assert last_reported_metrics(config.train.storage_path, "redo")["epoch"] == 3

    # The same run started again (as Ray Train does after a failure) with one more epoch: it
    # resumes from epoch 1's checkpoint, redoes epochs 2-3 without reporting them, reports epoch 4.
    longer = dataclasses.replace(config.train, epochs=4)
    build_trainer(dataclasses.replace(inputs.trial, train=longer), name="redo", callbacks=[EpochsToFile(reports)]).fit()
    assert reports.read_text().split() == ["1", "1", "2", "0", "3", "0", "4", "0"]
    last = last_reported_metrics(config.train.storage_path, "redo")
    assert last["epoch"] == 4 and last["stopped_by_patience"] == 0


def test_arxivcls_train_on_a_model_served_as_pickled_weights(ray_local, papers_file, tiny_bert, tmp_path):
    from arxivcls.train import run_training
    from test_pickled_weights import hub_style_copy

    pickled = hub_style_copy(tiny_bert, tmp_path / "hub")
    config = tiny_config(papers_file, pickled, tmp_path, epochs=1, output_dir=str(tmp_path / "model"))
    outcome = run_training(config, log=lambda *_: None)
    exported = Path(outcome["model_dir"])
    assert (exported / "model.safetensors").is_file() and not (exported / "pytorch_model.bin").exists()
    from arxivcls.models import load_tokenizer

    assert load_tokenizer(str(exported))("a paper")["input_ids"]  # the tokenizer travels with the model
    assert outcome["metrics"]["val_accuracy"] > 0 and outcome["metrics"]["peak_rss_gb"] > 0
    assert sorted(p.name for p in pickled.iterdir()) == ["config.json", "pytorch_model.bin", "vocab.txt"]
