"""The Python API of a study: its plan, and the study itself with its results as DataFrames.

    import arxivcls

    arxivcls.plan("tune/cpu.yaml")                       # the budget, untrained; prints readably
    result = arxivcls.tune("tune/cpu.yaml", **{"tune.num_samples": 8})
    result.trials, result.comparison                     # pandas DataFrames
    result.classifier("tuned").predict("A title", "An abstract")

Overrides are `--set`'s dotted keys (`**{"train.epochs": 1}`) or one dict per section
(`train={"epochs": 1}`). A Ray runtime this process already started or joined (`ray.init()`)
runs the study and stays up; otherwise a local one starts and is shut down afterwards. Bad input
raises arxivcls.UserError (a ValueError) with the CLI's one-line message.
"""
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from arxivcls.config import Config, load_config
from arxivcls.errors import UserError
from arxivcls.plan import declared_resources, format_plan, plan_study

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from arxivcls.classifier import Classifier


# ---------------------------------------------------------------- configuration

def _yaml_value(key: str, value) -> str:
    """A Python value as the YAML text `--set key=TEXT` would carry."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    except yaml.YAMLError:
        raise UserError(f"{key}: {value!r} is not a config value (give a str, number, bool, list or dict)")
    return text.removesuffix("...\n").strip()


def _dotted(overrides: Mapping) -> list[str]:
    """`--set` items from {"tune.num_samples": 8} and/or {"tune": {"num_samples": 8}}."""
    items = []
    for key, value in overrides.items():
        if "." in key:
            items.append(f"{key}={_yaml_value(key, value)}")
        elif isinstance(value, Mapping):
            items += [f"{key}.{name}={_yaml_value(f'{key}.{name}', v)}" for name, v in value.items()]
        else:
            raise UserError(f"override '{key}': give section.key=value (e.g. tune.num_samples=8) or a section's dict "
                            f"(e.g. tune={{'num_samples': 8}})")
    return items


def study_config(config, data=None, overrides: Mapping | None = None, set_args: Sequence[str] = ()) -> Config:
    """`config` (a YAML path, a Config, never changed, or None) with `data` as data.path, then the dotted
    `overrides` and the raw `--set` strings applied, validated."""
    if isinstance(data, Mapping):
        raise UserError("data is a papers file's path; give overrides as keywords, e.g. arxivcls.tune(config, **{'tune.num_samples': 8})")
    items = _dotted(overrides or {})
    if data is not None:
        items.append(f"data.path={_yaml_value('data.path', data)}")
    items += list(set_args)
    if isinstance(config, Config):  # through the same loader as a file: coerced and validated again
        return load_config(None, _dotted(config.to_dict()) + items)
    if config is None or isinstance(config, (str, os.PathLike)):  # None: the built-in defaults
        return load_config(config and os.fspath(config), items)
    raise UserError(f"config must be a YAML file's path or an arxivcls Config, got {type(config).__name__}")


# ---------------------------------------------------------------- Ray

@contextmanager
def _ray_as_found(worker_output: bool, study: bool = True):
    """A Ray runtime that this process already started or joined stays up (`study`: check that
    Ray Train can work in it, print its dashboard); one started or joined inside is shut down at
    the end. Workers' output goes to the driver only with `worker_output`."""
    import ray

    from arxivcls.raycluster import dashboard_line, running_dashboard_url, train_cleanup_problem
    from arxivcls.raycluster import worker_output as output_to_driver

    running = ray.is_initialized()
    if running and study:
        problem = train_cleanup_problem()
        if problem:
            raise UserError(problem)
        print(f"ray: the running Ray runtime; {dashboard_line(running_dashboard_url())}", flush=True)
    try:
        with output_to_driver(worker_output):
            yield
    finally:
        if not running and ray.is_initialized():
            ray.shutdown()


# ---------------------------------------------------------------- plan

@dataclass(frozen=True)
class Plan:
    """`arxivcls plan`'s estimate: `numbers` as plan_study computes them, `text` as the CLI prints."""

    numbers: dict
    text: str

    def __getitem__(self, key: str):
        return self.numbers[key]

    def __repr__(self) -> str:
        return self.text


def plan(config, data=None, *, address: str | None = None, cpus: float | None = None, gpus: float | None = None,
         nodes: int | None = None, papers_per_s: float | None = None, gpu_figures=None, **overrides) -> Plan:
    """What a study would do and cost, without training: on the Ray cluster this process is
    connected to or `address` names, else on a cluster of `cpus`/`gpus`/`nodes` if given, else
    on this machine. GPU workers are priced from `papers_per_s`, or from `gpu_figures`
    (benchmarks.gpu_check's JSON, a path or a dict), else from an assumed GPU."""
    config = study_config(config, data, overrides)
    declared = gpus is not None or cpus is not None or nodes is not None
    if declared and address:
        raise UserError("give either --address (a running cluster) or --gpus/--cpus/--nodes (a declared one), not both")
    if papers_per_s is not None and papers_per_s <= 0:
        raise UserError("--papers-per-s must be > 0")
    resources = declared_resources(cpus, gpus, nodes or 1, config.train) if declared else None
    with _ray_as_found(worker_output=False, study=False):
        numbers = plan_study(config, resources, address=address, papers_per_s=papers_per_s, gpu_figures=gpu_figures)
    return Plan(numbers, format_plan(numbers, config))


# ---------------------------------------------------------------- tune

def tune(config, data=None, resume: bool = False, warm_start: str | None = None, *, address: str | None = None,
         worker_output: bool = False, **overrides) -> "StudyResult":
    """Run the study (`resume`: continue it; `warm_start`: start its search from an earlier study's
    finished trials), then its evaluation, and return its results. `worker_output`: print Ray
    workers' output here too (the CLI does); by default it stays in Ray's log files."""
    from arxivcls.tuning import run_study

    config = study_config(config, data, overrides)
    with _ray_as_found(worker_output):
        results_dir = run_study(config, resume=resume, address=address, warm_start=warm_start)
    return StudyResult.load(results_dir)


# ---------------------------------------------------------------- results

@dataclass
class StudyResult:
    """A finished study's results directory (report, tables, plots) read back as Python objects."""

    results_dir: Path
    study: dict = field(repr=False)  # study.json
    evaluation: dict = field(repr=False)  # evaluation.json ({} before the evaluation stage)

    @classmethod
    def load(cls, results_dir) -> "StudyResult":
        """A finished study's results, e.g. StudyResult.load("reports/cpu")."""
        import json

        results_dir = Path(results_dir)
        if not (results_dir / "study.json").is_file():
            raise UserError(f"{results_dir} holds no study.json: not a finished study's results directory")
        read = lambda name: json.loads((results_dir / name).read_text()) if (results_dir / name).is_file() else {}
        return cls(results_dir, read("study.json"), read("evaluation.json"))

    @property
    def metric(self) -> str:
        return self.study["config"]["tune"]["metric"]

    def table(self, name: str) -> "pd.DataFrame":
        """One of the results' tables by name: trials, history, comparison, intervals, differences,
        categories, size_bins, confusion_pairs, category_differences."""
        import pandas as pd

        path = self.results_dir / f"{name}.csv"
        if not path.is_file():
            have = sorted(p.stem for p in self.results_dir.glob("*.csv"))
            raise UserError(f"{self.results_dir} has no table '{name}' (it has: {', '.join(have)})")
        return pd.read_csv(path, index_col=0 if name in {"comparison", "intervals"} else None)

    @cached_property
    def trials(self) -> "pd.DataFrame":
        """One row per trial, the default configuration's first: its searched parameters, how it
        ended, its best validation score (column tune.metric), epochs run, seconds, and the node
        it ran on where the study recorded one."""
        from arxivcls.trials import SEARCHED_TRIAL_PREFIX

        raw = self.table("trials")
        params = [c for c in raw.columns if c.startswith(SEARCHED_TRIAL_PREFIX)]
        trials = raw[["trial_id", "is_default"]].join(raw[params].rename(columns=lambda c: c[len(SEARCHED_TRIAL_PREFIX):]))
        trials["status"] = raw.status
        trials[self.metric] = raw.best_metric
        for column in ("epochs_run", "seconds"):
            trials[column] = raw[column]
        node = next((c for c in ("node_ip", "node") if c in raw.columns), None)
        if node:
            trials["node"] = raw[node]
        return trials

    @property
    def best_params(self) -> dict:
        return dict(self.study["best_trial"]["params"])

    @property
    def best_config(self) -> Config:
        """The study's configuration with the best trial's hyperparameters as its train values."""
        config = self.study["config"]
        return study_config(Config(), overrides={**config, "train": {**config["train"], **self.best_params}})

    @cached_property
    def comparison(self) -> "pd.DataFrame":
        """Test metrics per model; each metric with an interval is followed by its 95% bounds
        (`accuracy`, `accuracy_low`, `accuracy_high`, ...)."""
        comparison = self.table("comparison")
        intervals = self.table("intervals") if (self.results_dir / "intervals.csv").is_file() else None
        if intervals is None:
            return comparison
        with_bounds = [c for c in comparison.columns if f"{c}_low" in intervals.columns]
        order = [name for c in with_bounds for name in (c, f"{c}_low", f"{c}_high")]
        joined = comparison.join(intervals[[f"{c}_{end}" for c in with_bounds for end in ("low", "high")]])
        return joined[order + [c for c in comparison.columns if c not in with_bounds]]

    @property
    def differences(self) -> "pd.DataFrame":
        """Paired differences between models on the same test papers, with 95% intervals and a verdict."""
        return self.table("differences")

    @property
    def report(self) -> Path:
        return self.results_dir / "report.md"

    @property
    def models(self) -> dict[str, Path]:
        """name -> saved model directory (tuned, default, and after the evaluation baseline, ensemble)."""
        found = {name: Path(path) for name, path in self.study.get("models", {}).items()}
        models_dir = Path(self.study["models"]["tuned"]).parent if "tuned" in self.study.get("models", {}) else None
        if models_dir is not None:
            found["baseline"] = models_dir / "baseline"
            found["ensemble"] = Path(self.evaluation.get("ensemble_dir") or models_dir / "ensemble")
        return {name: path for name, path in found.items() if path.is_dir()}

    def classifier(self, name: str = "tuned") -> "Classifier":
        from arxivcls.classifier import Classifier

        models = self.models
        if name not in models:
            raise UserError(f"study '{self.study['study']}' has no saved model '{name}' on this machine "
                            f"(it has: {', '.join(models) or 'none'})")
        return Classifier(models[name])

    @cached_property
    def figures(self) -> dict[str, "Figure"]:
        """The report's plots as matplotlib Figures, by file name (confusion_matrix_tuned, size_bins, ...)."""
        return {path.stem: _png_figure(path) for path in sorted(self.results_dir.glob("*.png"))}

    def __repr__(self) -> str:
        best = self.study["best_trial"]
        statuses = ", ".join(f"{n} {status}" for status, n in self.study.get("trials_by_status", {}).items())
        lines = [f"study '{self.study['study']}': {self.study['num_trials']} trials ({statuses}); best trial "
                 f"{best['trial_id']} {self.metric} {best[self.metric]:.4f}",
                 f"results: {self.results_dir} (report.md)"]
        if (self.results_dir / "comparison.csv").is_file():
            comparison = self.comparison
            shown = [c for c in ("accuracy", "macro_f1") if c in comparison.columns]
            lines.append("test metrics, 95% intervals:")
            for model, row in comparison.iterrows():
                lines.append(f"  {model:<10} " + "  ".join(
                    f"{c} {row[c]:.3f}" + (f" [{row[c + '_low']:.3f}, {row[c + '_high']:.3f}]" if f"{c}_low" in row else "")
                    for c in shown))
        return "\n".join(lines)


def _png_figure(path: Path) -> "Figure":
    """A saved plot as a Figure at its own size (a notebook shows it inline)."""
    import matplotlib.image
    from matplotlib.figure import Figure

    image = matplotlib.image.imread(path)
    dpi = 100
    figure = Figure(figsize=(image.shape[1] / dpi, image.shape[0] / dpi), dpi=dpi)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(image)
    axes.set_axis_off()
    return figure
