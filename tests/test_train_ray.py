"""The real Ray Train worker loop on CPU with a tiny BERT (slow: starts Ray)."""
import dataclasses
import json
from pathlib import Path

import pytest

from arxivcls.config import Config, DataConfig, ModelConfig, TrainConfig
from arxivcls.inputs import prepare_inputs
from arxivcls.checkpoints import best_checkpoint, export_model
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
    epochs = result.metrics_dataframe.sort_values("epoch")  # one row per epoch
    assert epochs.epoch.tolist() == [1, 2, 3]
    last = result.metrics
    assert last["epoch"] == 3
    assert last["val_loss"] < epochs.val_loss.iloc[0] - 0.05
    assert last["val_accuracy"] > 1.5 / inputs.prepared.num_labels  # better than chance
    for key in ("val_macro_f1", "val_weighted_f1", "val_macro_precision", "val_weighted_recall", "train_loss", "worker_node_ip"):
        assert key in last

    checkpoint, value = best_checkpoint(result, "val_macro_f1", "max")
    assert value == pytest.approx(epochs.val_macro_f1.max())
    exported = Path(export_model(checkpoint.path, str(tmp_path / "model")))
    assert (exported / "model.safetensors").is_file() and not (exported / "training_state.pt").exists()
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    assert model.config.id2label == inputs.prepared.id2label
    assert json.loads((exported / "metrics.json").read_text())["val_macro_f1"] == pytest.approx(value)


def test_patience_stops_a_run_that_does_not_improve(ray_local, papers_file, tiny_bert, tmp_path):
    config = tiny_config(papers_file, tiny_bert, tmp_path, learning_rate=1e-9, epochs=6, patience=2, metric="val_loss", mode="min")
    inputs = prepare_inputs(config, log=lambda *_: None)
    result = build_trainer(inputs.trial, name="patience").fit()
    # lr ~0: the loss barely moves; it "improves" by float noise at most once or twice, then stops early
    assert result.metrics["stopped_by_patience"] == 1 and result.metrics["epoch"] < 6


class EpochsToFile:
    """A Ray Train callback (it runs in the controller actor) that appends each reported epoch to a file."""

    def __new__(cls, path):
        from ray.train.v2.api.callback import UserCallback

        class _Recorder(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                with open(path, "a") as f:
                    f.write(f"{metrics[0]['epoch']} {int(checkpoint is not None)}\n")

        return _Recorder()


def test_ray_keeps_the_best_and_the_latest_and_a_restarted_run_goes_on_from_the_latest(
        ray_local, papers_file, tiny_bert, tmp_path):
    # lr ~0: predictions never change, so macro F1 is best at epoch 1 (later ties rank below it only by Ray's order)
    config = tiny_config(papers_file, tiny_bert, tmp_path, learning_rate=1e-9, epochs=3, patience=10, metric="val_loss", mode="min")
    inputs = prepare_inputs(config, log=lambda *_: None)
    reports = tmp_path / "reports.txt"
    first = build_trainer(inputs.trial, name="redo", callbacks=[EpochsToFile(reports)]).fit()
    assert reports.read_text().split("\n")[:3] == ["1 1", "2 1", "3 1"]  # every epoch reported with its checkpoint
    checkpoints = lambda: sorted(p.name for p in (tmp_path / "runs" / "redo").glob("checkpoint_2*") if p.is_dir())
    on_disk = checkpoints()
    assert len(on_disk) <= 2  # checkpoint_keep=1: the best, and the latest to resume from
    assert first.checkpoint.path.endswith(on_disk[-1])  # the latest is kept

    # The same run started again (as Ray Train does after a failure, or Tune for a retried trial)
    # with one more epoch: it resumes after epoch 3 and reports epoch 4 only.
    longer = dataclasses.replace(config.train, epochs=4)
    second = build_trainer(dataclasses.replace(inputs.trial, train=longer), name="redo", callbacks=[EpochsToFile(reports)]).fit()
    assert reports.read_text().split() == ["1", "1", "2", "1", "3", "1", "4", "1"]
    assert second.metrics["epoch"] == 4 and second.metrics["trained_epochs"] == 4
    assert len(checkpoints()) <= 2


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
