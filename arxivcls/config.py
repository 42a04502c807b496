"""Plain-data configuration: dataclasses loaded from YAML, overridden with `--set section.key=value`.

Unknown keys and invalid values raise UserError (the CLI turns that into `error: ...`, exit 2).
"""
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from arxivcls.errors import UserError


@dataclass
class DataConfig:
    path: str = "data/arxiv_sample.parquet"  # the embedded sample; --data for the full file or your own
    min_per_class: int = 5  # the original study dropped classes under 5 papers
    top_categories: int = 0  # 0 = all; else only the K categories with the most papers in the file
    max_papers: int = 0  # 0 = all; else a stratified sample of this size
    max_per_class: int = 0  # 0 = no cap; caps huge classes (math.AP) before sampling
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_length: int = 512  # tokens; truncation only, padding is per batch
    seed: int = 42
    cache_dir: str = ".cache/arxivcls"


@dataclass
class ModelConfig:
    name: str = "minilm"  # alias (scibert | minilm), hub id, or local directory


@dataclass
class TrainConfig:
    # The original study's "default" model: lr 5e-5, batch 8, 3 epochs, weight decay 0.01 and
    # 500 warmup steps. 500 steps were ~1.2% of its 3 epochs over ~109k training papers at batch 8,
    # so warmup is a ratio here and scales with dataset size.
    learning_rate: float = 5e-5
    batch_size: int = 8  # per worker
    epochs: int = 3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.012
    grad_accum_steps: int = 1
    loss: str = "ce"  # ce | weighted_ce (inverse-sqrt-frequency class weights)
    label_smoothing: float = 0.0
    patience: int = 2  # epochs without improvement of the tuning metric before stopping
    precision: str = "auto"  # auto (bf16 on CUDA and on CPUs with native bf16, fp16 on old GPUs, else fp32) | fp32 | bf16 | fp16
    eval_batch_size: int = 64
    max_steps_per_epoch: int = 0  # 0 = whole epoch; > 0 caps batches per epoch (smoke tests, benchmarks)
    num_workers: int = 1  # Ray Train workers per run (DDP when > 1)
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0  # 0 = CPU training; fractions share a GPU between trials
    seed: int = 42
    metric: str = "val_macro_f1"  # what early stopping and checkpoint ranking follow
    mode: str = "max"
    checkpoint_keep: int = 1  # best-N checkpoints kept per run
    max_failures: int = 2  # Ray Train worker-group restarts from the last checkpoint
    storage_path: str = "runs"  # local dir, shared filesystem, or s3:// / gs://
    output_dir: str = ""  # `arxivcls train` copies its best checkpoint here ("": <tune.models_dir>/<tune.study>/train)


@dataclass
class TuneConfig:
    study: str = "study"
    num_samples: int = 10
    metric: str = "val_macro_f1"  # one explicit objective, never a sum of metrics
    mode: str = "max"
    # name -> {type: loguniform|uniform|int|choice, low, high | values}; keys are TrainConfig fields,
    # and max_length (data.max_length: the study tokenizes once at the largest, each trial truncates)
    search_space: dict = field(default_factory=lambda: {
        "learning_rate": {"type": "loguniform", "low": 1e-5, "high": 5e-5},
        "batch_size": {"type": "choice", "values": [8, 16, 32]},
        "epochs": {"type": "int", "low": 2, "high": 4},
        "weight_decay": {"type": "loguniform", "low": 1e-3, "high": 1e-1},
        "warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.1},
        "loss": {"type": "choice", "values": ["ce", "weighted_ce"]},
        "label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.1},
    })
    scheduler: str = "asha"  # Ray's asynchronous successive halving (ASHAScheduler), the only one
    grace_period: int = 1  # epochs every trial gets before it can be stopped
    reduction_factor: int = 2  # the best 1/reduction_factor of the trials at a rung go on
    max_concurrent: int = 0  # 0 = as many as the cluster's free resources fit
    max_failures: int = 1  # Tune retries of a failed trial (Train resumes from its checkpoint)
    seed: int = 42
    results_dir: str = "reports"  # reports/<study>/: report, tables, plots (outside git; results/ holds the committed runs)
    models_dir: str = "models"  # models/<study>/{tuned,default}: Hugging Face format, outside git
    min_free_disk_gb: float = 0.0  # extra headroom required on top of the checkpoint estimate
    # Ray Tune loggers that record every trial's epochs: tensorboard (event files in each trial's
    # directory under runs/<study>/) | mlflow (one MLflow run per trial, experiment = tune.study)
    tracking: list = field(default_factory=lambda: ["tensorboard"])
    mlflow_uri: str = ""  # "" = MLFLOW_TRACKING_URI if set, else sqlite:///runs/<study>/mlflow/mlflow.db


@dataclass
class EvalConfig:
    batch_size: int = 32
    num_actors: int = 0  # 0 = one per free CPU (or GPU), at most 4
    top_k: int = 3
    baseline: bool = True
    logit_adjust: bool = True


@dataclass
class BaselineConfig:
    # The TF-IDF baseline's own study (arxivcls.baseline_search): Optuna TPE seeded with tune.seed,
    # scored like the transformer's on the validation split (tune.metric), each trial a 1-CPU Ray
    # task, trials_per_batch at a time; trial 0 is arxivcls.baseline.BaselineParams' defaults. On the
    # quick start's split (480 training, 110 validation papers) a trial takes 0.1-2.5 s of one core
    # (docs/design.md: "The baseline").
    num_trials: int = 16
    trials_per_batch: int = 4
    # name -> {type: loguniform|uniform|int|choice, low, high | values}; keys are BaselineParams fields
    search_space: dict = field(default_factory=lambda: {
        "classifier": {"type": "choice", "values": ["logistic", "svm"]},
        "alpha": {"type": "loguniform", "low": 1e-6, "high": 1e-2},
        "ngram_max": {"type": "int", "low": 1, "high": 2},
        "min_df": {"type": "int", "low": 1, "high": 2},
        "sublinear_tf": {"type": "choice", "values": [True, False]},
        "class_weight": {"type": "choice", "values": ["none", "balanced"]},
    })


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SPACE_TYPES = {"loguniform", "uniform", "int", "choice"}
TRACKERS = {"tensorboard", "mlflow"}
LOSSES = {"ce", "weighted_ce"}
PRECISIONS = {"auto", "fp32", "bf16", "fp16"}


def _coerce(value: Any, target: Any, where: str) -> Any:
    """Convert a YAML / --set value to the type of the dataclass default."""
    if isinstance(target, bool):
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        if isinstance(value, bool):
            return value
    elif isinstance(target, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif isinstance(target, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(target, str):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(target, dict):
        if isinstance(value, dict):
            return value
    elif isinstance(target, list):
        if isinstance(value, str):  # --set section.key=a,b
            return [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    raise UserError(f"{where}: expected {type(target).__name__}, got {value!r}")


def _apply(section_obj: Any, values: dict, section: str) -> None:
    known = {f.name for f in dataclasses.fields(section_obj)}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"unknown config key '{section}.{key}' (known: {', '.join(sorted(known))})")
        setattr(section_obj, key, _coerce(value, getattr(section_obj, key), f"{section}.{key}"))


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UserError(f"--set expects section.key=value, got '{item}'")
    dotted, raw = item.split("=", 1)
    section, key = dotted.split(".", 1)
    return section, key, yaml.safe_load(raw) if raw != "" else ""


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    config = Config()
    raw: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}")
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must be a mapping of sections")
    sections = {f.name for f in dataclasses.fields(config)}
    for section, values in raw.items():
        if section not in sections:
            raise UserError(f"unknown config section '{section}' (known: {', '.join(sorted(sections))})")
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' must be a mapping")
        if section in ("tune", "baseline") and "search_space" in values:
            getattr(config, section).search_space = {}  # a config's space replaces the default, it does not merge
        _apply(getattr(config, section), values, section)
    for item in overrides:
        section, key, value = _parse_override(item)
        if section not in sections:
            raise UserError(f"unknown config section '{section}' in --set {item}")
        if section in ("tune", "baseline") and key.startswith("search_space."):  # one searched parameter's range
            target = getattr(config, section)
            target.search_space = {**target.search_space, key.split(".", 1)[1]: value}
            continue
        _apply(getattr(config, section), {key: value}, section)
    validate(config)
    return config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate_train(t: TrainConfig) -> None:
    _check(math.isfinite(t.learning_rate) and t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}")
    _check(t.batch_size >= 1, "train.batch_size must be >= 1")
    _check(t.epochs >= 1, "train.epochs must be >= 1")
    _check(t.weight_decay >= 0, "train.weight_decay must be >= 0")
    _check(0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)")
    _check(t.grad_accum_steps >= 1, "train.grad_accum_steps must be >= 1")
    _check(t.loss in LOSSES, f"train.loss must be one of {sorted(LOSSES)}, got '{t.loss}'")
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing must be in [0, 1)")
    _check(t.patience >= 1, "train.patience must be >= 1")
    _check(t.precision in PRECISIONS, f"train.precision must be one of {sorted(PRECISIONS)}")
    _check(t.num_workers >= 1 and t.cpus_per_worker >= 1, "train.num_workers and train.cpus_per_worker must be >= 1")
    _check(t.gpus_per_worker >= 0, "train.gpus_per_worker must be >= 0")
    _check(t.mode in {"max", "min"}, "train.mode must be 'max' or 'min'")
    _check(t.checkpoint_keep >= 1, "train.checkpoint_keep must be >= 1")
    _check(t.max_failures >= 0, "train.max_failures must be >= 0")
    _check(t.max_steps_per_epoch >= 0, "train.max_steps_per_epoch must be >= 0")


def validate_search_space(space: dict, train: TrainConfig) -> None:
    _check(bool(space), "tune.search_space is empty: give at least one hyperparameter to search")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, spec in space.items():
        _check(name in train_fields or name == "max_length", f"tune.search_space: '{name}' is not a train setting or max_length")
        _check(isinstance(spec, dict) and spec.get("type") in SPACE_TYPES,
               f"tune.search_space.{name}: needs type in {sorted(SPACE_TYPES)}")
        if spec["type"] == "choice":
            candidates = spec.get("values")
            _check(isinstance(candidates, list) and len(candidates) >= 1,
                   f"tune.search_space.{name}: choice needs a non-empty 'values' list")
        else:
            low, high = spec.get("low"), spec.get("high")
            _check(isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high,
                   f"tune.search_space.{name}: needs numeric low < high")
            _check(spec["type"] != "loguniform" or low > 0, f"tune.search_space.{name}: loguniform needs low > 0")
            candidates = [low, high]
        for value in candidates:  # every end of the range must itself be a valid setting
            where = f"tune.search_space.{name}"
            if name == "max_length":
                _check(isinstance(value, int) and 8 <= value <= 8192, f"{where}: max_length must be an integer between 8 and 8192")
                continue
            try:
                validate_train(dataclasses.replace(train, **{name: _coerce(value, getattr(train, name), where)}))
            except UserError as err:
                raise UserError(f"{where}: {err}")


BASELINE_CHOICES = {"classifier": ["logistic", "svm"], "class_weight": ["none", "balanced"], "sublinear_tf": [True, False]}
BASELINE_RANGES = {"alpha": (1e-12, 1e3), "ngram_max": (1, 3), "min_df": (1, 1000)}  # alpha a float, the others integers


def validate_baseline(b: BaselineConfig) -> None:
    _check(b.num_trials >= 1 and b.trials_per_batch >= 1, "baseline.num_trials and baseline.trials_per_batch must be >= 1")
    known = sorted({*BASELINE_CHOICES, *BASELINE_RANGES})
    for name, spec in b.search_space.items():
        where = f"baseline.search_space.{name}"
        _check(name in known, f"baseline.search_space: '{name}' is not a baseline setting (known: {', '.join(known)})")
        _check(isinstance(spec, dict) and spec.get("type") in SPACE_TYPES, f"{where}: needs type in {sorted(SPACE_TYPES)}")
        values = spec.get("values") if spec["type"] == "choice" else [spec.get("low"), spec.get("high")]
        _check(isinstance(values, list) and len(values) >= 1, f"{where}: choice needs a non-empty 'values' list")
        if name in BASELINE_CHOICES:
            _check(spec["type"] == "choice" and all(v in BASELINE_CHOICES[name] for v in values),
                   f"{where}: a choice among {BASELINE_CHOICES[name]}")
            continue
        low, high = BASELINE_RANGES[name]
        kind = float if name == "alpha" else int
        _check(all(isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) and low <= v <= high
                   for v in values), f"{where}: {kind.__name__} values between {low:g} and {high:g}")
        _check(spec["type"] == "choice" or values[0] < values[1], f"{where}: needs low < high")
        _check(kind is float or spec["type"] in {"int", "choice"}, f"{where}: an integer setting needs type int or choice")


def validate(config: Config) -> None:
    d, tu, e = config.data, config.tune, config.eval
    _check(d.min_per_class >= 1, "data.min_per_class must be >= 1")
    _check(d.max_papers >= 0, "data.max_papers must be >= 0")
    _check(d.max_per_class >= 0, "data.max_per_class must be >= 0")
    _check(d.top_categories >= 0, "data.top_categories must be >= 0")
    _check(0 < d.val_fraction < 0.5 and 0 < d.test_fraction < 0.5, "data.val_fraction and data.test_fraction must be in (0, 0.5)")
    _check(8 <= d.max_length <= 8192, "data.max_length must be between 8 and 8192")
    validate_train(config.train)
    _check(tu.num_samples >= 1, f"tune.num_samples must be >= 1, got {tu.num_samples}")
    _check(tu.mode in {"max", "min"}, "tune.mode must be 'max' or 'min'")
    _check(tu.max_failures >= 0, "tune.max_failures must be >= 0")
    _check(tu.grace_period >= 1 and tu.reduction_factor >= 2, "tune.grace_period must be >= 1 and tune.reduction_factor >= 2")
    _check(tu.max_concurrent >= 0, "tune.max_concurrent must be >= 0")
    _check(tu.scheduler != "sync", "tune.scheduler: sync (synchronous halving) is not offered: use asha "
           "(Ray's ASHAScheduler; size the study with `arxivcls plan`)")
    _check(tu.scheduler == "asha", f"tune.scheduler must be 'asha', got '{tu.scheduler}'")
    _check(bool(tu.study) and "/" not in tu.study and tu.study not in {".", ".."}, "tune.study must be a plain name")
    _check(tu.metric.startswith("val_"), f"tune.metric must be a validation metric (val_...), got '{tu.metric}'")
    _check(set(tu.tracking) <= TRACKERS, f"tune.tracking: each must be one of {sorted(TRACKERS)}, got {tu.tracking}")
    validate_search_space(tu.search_space, config.train)
    validate_baseline(config.baseline)
    _check(e.batch_size >= 1 and e.num_actors >= 0 and e.top_k >= 1, "eval.batch_size and eval.top_k must be >= 1")
