"""A trial's inputs, and preparing them once per run or study on the driver."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from arxivcls.config import Config, TrainConfig
from arxivcls.rundir import RunDir


@dataclass(frozen=True)
class TrialInputs:
    """What one Ray Train run needs, from the study to every worker: its hyperparameters, the model
    to start from, the tokenized data in the object store, the rungs to wait at and its run directory."""

    train: TrainConfig
    model_dir: str = ""
    id2label: dict = field(default_factory=dict)
    data_ref: Any = None  # ray.ObjectRef of {"train": TokenizedSplit, "val": TokenizedSplit}
    wait_at_epochs: tuple[int, ...] = ()  # tune.scheduler: sync's rung epochs
    run: RunDir | None = None  # set by train.build_trainer
    max_length: int = 512  # data.max_length: saved with the tokenizer, so predict truncates as training did

    def with_train(self, **changes) -> "TrialInputs":
        return dataclasses.replace(self, train=dataclasses.replace(self.train, **changes))


@dataclass(frozen=True)
class PreparedInputs:
    prepared: Any  # arxivcls.data.Prepared
    splits: dict  # name -> TokenizedSplit (train, val)
    tokenization: dict  # {"tokenized": n, "cache_hits": n}
    trial: TrialInputs


def preflight(config: Config) -> str:
    """Fail on a bad model name or data path before starting Ray (seconds, not a minute).
    Returns the model's local directory."""
    from arxivcls.models import resolve_model

    from arxivcls.data import check_data_file

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
    splits = {name: tokenize_split(prepared, name, tokenizer, config.data.max_length, config.data.cache_dir,
                                   log=log, stats=tokenization)
              for name in ("train", "val")}  # test is read by the evaluation stage only
    trial = TrialInputs(config.train, model_dir, prepared.id2label, ray.put(splits), max_length=config.data.max_length)
    return PreparedInputs(prepared, splits, tokenization, trial)
