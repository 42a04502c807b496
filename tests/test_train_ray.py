"""The real Ray Train worker loop on CPU with a tiny BERT (slow: starts Ray)."""
import json
from pathlib import Path

import pytest

from arxivcls.config import Config, DataConfig, ModelConfig, TrainConfig
from arxivcls.train import best_checkpoint, build_trainer, export_model, prepare_inputs

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
    result = build_trainer(config.train, inputs["loop_base"], name="tiny").fit()
    history = result.metrics_dataframe.sort_values("epoch")  # one row per retained checkpoint
    assert history.epoch.tolist() == [1, 2, 3]
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0] - 0.05
    assert history.val_accuracy.iloc[-1] > 1.5 / inputs["prepared"].num_labels  # better than chance
    for key in ("val_macro_f1", "val_weighted_f1", "val_macro_precision", "val_weighted_recall", "train_loss"):
        assert key in history

    checkpoint, value = best_checkpoint(result, "val_macro_f1", "max")
    exported = Path(export_model(checkpoint.path, str(tmp_path / "model")))
    assert (exported / "model.safetensors").is_file() and not (exported / "training_state.pt").exists()
    model = AutoModelForSequenceClassification.from_pretrained(exported)
    assert model.config.id2label == inputs["prepared"].id2label
    assert json.loads((exported / "metrics.json").read_text())["val_macro_f1"] == pytest.approx(value)


def test_patience_stops_a_run_that_does_not_improve(ray_local, papers_file, tiny_bert, tmp_path):
    config = tiny_config(papers_file, tiny_bert, tmp_path, learning_rate=1e-9, epochs=6, patience=2, metric="val_loss", mode="min")
    inputs = prepare_inputs(config, log=lambda *_: None)
    result = build_trainer(config.train, inputs["loop_base"], name="patience").fit()
    # lr ~0: the loss barely moves; it "improves" by float noise at most once or twice, then stops early
    assert result.metrics["stopped_by_patience"] == 1 and result.metrics["epoch"] < 6
