"""A trial's inputs, and preparing them once per run or study on the driver."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from arxivcls.config import Config, TrainConfig


@dataclass(frozen=True)
class TrialInputs:
    """What one Ray Train run needs, from the study to every worker: its hyperparameters, the model
    to start from, the tokenized data in the object store and the tokens each paper keeps."""

    train: TrainConfig
    model_dir: str = ""
    id2label: dict = field(default_factory=dict)
    data_ref: Any = None  # ray.ObjectRef of {"train": TokenizedSplit, "val": TokenizedSplit}
    max_length: int = 512  # saved with the tokenizer, so predict truncates as training did

    def with_train(self, **changes) -> "TrialInputs":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))

    def with_params(self, params: dict) -> "TrialInputs":
        """This trial's searched values: train settings, and data.max_length when it is searched."""
        params = dict(params)
        max_length = int(params.pop("max_length", self.max_length))
        return dataclasses.replace(self.with_train(**params), max_length=max_length)


@dataclass(frozen=True)
class PreparedInputs:
    prepared: Any  # arxivcls.data.Prepared
    splits: dict  # name -> TokenizedSplit (train, val)
    tokenization: dict  # {"tokenized": n, "cache_hits": n}
    trial: TrialInputs


def tokenized_length(config: Config) -> int:
    """Tokens kept per paper when tokenizing once for the study: data.max_length, or the largest
    max_length the search space allows (each trial then truncates to its own)."""
    spec = config.tune.search_space.get("max_length")
    if not spec:
        return config.data.max_length
    values = spec["values"] if spec["type"] == "choice" else [spec["high"]]
    return max([config.data.max_length, *(int(v) for v in values)])


def preflight(config: Config) -> str:
    """Fail on a bad model name or data path before starting Ray (seconds, not a minute).
    Returns the model's local directory."""
    from arxivcls.data import check_data_file
    from arxivcls.models import resolve_model

    model_dir = resolve_model(config.model.name)
    check_data_file(config.data.path)
    return model_dir


def prepare_inputs(config: Config, log=print) -> PreparedInputs:
    """Prepare + tokenize once; put the token ids in the object store for every worker of every trial."""
    import ray

    from arxivcls.data import prepare
    from arxivcls.features import tokenize_split
    from arxivcls.models import load_tokenizer, resolve_model

    model_dir = resolve_model(config.model.name)
    prepared = prepare(config.data, log=log)
    tokenizer = load_tokenizer(model_dir)
    tokenization = {"tokenized": 0, "cache_hits": 0}
    splits = {name: tokenize_split(prepared, name, tokenizer, tokenized_length(config), config.data.cache_dir,
                                   log=log, stats=tokenization)
              for name in ("train", "val")}  # test is read by the evaluation stage only
    trial = TrialInputs(config.train, model_dir, prepared.id2label, ray.put(splits), max_length=config.data.max_length)
    return PreparedInputs(prepared, splits, tokenization, trial)
