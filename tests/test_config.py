import pytest

from arxivcls.config import load_config
from arxivcls.errors import UserError


def test_shipped_configs_load():
    cpu = load_config("tune/cpu.yaml")
    assert cpu.model.name == "minilm" and cpu.data.path == "data/arxiv_sample.parquet" and cpu.tune.num_samples >= 4
    assert "epochs" not in cpu.tune.search_space  # epochs are the scheduler's budget, not a hyperparameter
    gpu = load_config("tune/scibert.yaml")
    assert gpu.model.name == "scibert" and gpu.data.max_length == 512 and gpu.train.gpus_per_worker > 0


def test_overrides_are_typed():
    config = load_config("tune/cpu.yaml", ["train.learning_rate=1e-4", "train.epochs=5", "eval.baseline=false"])
    assert config.train.learning_rate == 1e-4 and config.train.epochs == 5 and config.eval.baseline is False


def test_config_search_space_replaces_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("tune:\n  search_space:\n    learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-4}\n")
    assert list(load_config(str(path)).tune.search_space) == ["learning_rate"]


@pytest.mark.parametrize("override, message", [
    ("train.learning_rate=-1e-5", "learning_rate must be positive"),
    ("train.learning_rate=abc", "expected float"),
    ("train.batch_size=0", "batch_size"),
    ("train.loss=focal", "train.loss must be one of"),
    ("tune.num_samples=0", "num_samples must be >= 1"),
    ("train.nonsense=1", "unknown config key 'train.nonsense'"),
    ("nosection.key=1", "unknown config section"),
    ("tune.metric=accuracy", "validation metric"),
    ("data.val_fraction=0.7", "val_fraction"),
    ("noequals", "section.key=value"),
])
def test_bad_values_rejected(override, message):
    with pytest.raises(UserError, match=message):
        load_config("tune/cpu.yaml", [override])


def test_bad_search_spaces_rejected(tmp_path):
    cases = {
        "tune: {search_space: {}}": "search_space is empty",
        "tune: {search_space: {learning_rate: {type: loguniform, low: -1, high: 1}}}": "loguniform needs low > 0",
        "tune: {search_space: {momentum: {type: uniform, low: 0, high: 1}}}": "not a train setting",
        "tune: {search_space: {loss: {type: choice, values: [ce, hinge]}}}": "train.loss must be one of",
        "tune: {search_space: {learning_rate: {type: gaussian}}}": "needs type",
        "train: [1, 2]": "must be a mapping",
    }
    for text, message in cases.items():
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            load_config(str(path))


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {learning_rate: [\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(str(bad))


def test_one_searched_parameter_is_overridden_and_validated():
    config = load_config("tune/scibert.yaml", ["tune.search_space.batch_size={type: choice, values: [2, 4]}"])
    assert config.tune.search_space["batch_size"] == {"type": "choice", "values": [2, 4]}
    assert config.tune.search_space["learning_rate"]["type"] == "loguniform"  # the others are kept
    with pytest.raises(UserError, match="batch_size"):
        load_config("tune/scibert.yaml", ["tune.search_space.batch_size={type: choice, values: [0]}"])
