"""A study's search space as Tune domains, the Optuna (TPE) searcher that proposes trials, and the
study's Optuna storage (a SQLite file in the study's directory) with warm starts from earlier studies.

Imports optuna and Ray Tune: import it where a study is set up, not from light modules.
"""
import warnings
from pathlib import Path

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from arxivcls.config import Config
from arxivcls.errors import UserError

OPTUNA_DB = ("search", "optuna.db")  # inside the study's directory: runs/<study>/search/optuna.db
WARM_START_ATTR = "warm_start_from"  # user attribute of a trial copied from an earlier study
RAY_TRIAL_ATTR = "ray_trial_id"  # user attribute: the Ray Tune trial an Optuna trial is
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study's own lines say where its Optuna study is


def tune_search_space(space: dict) -> dict:
    domains = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "loguniform":
            domains[name] = tune.loguniform(spec["low"], spec["high"])
        elif kind == "uniform":
            domains[name] = tune.uniform(spec["low"], spec["high"])
        elif kind == "int":
            domains[name] = tune.randint(int(spec["low"]), int(spec["high"]) + 1)  # inclusive high
        else:
            domains[name] = tune.choice(list(spec["values"]))
    return domains


def default_point(space: dict, config: Config) -> dict:
    """The config's own `train` values (and data.max_length), expressed in the searched parameters."""
    return {name: config.data.max_length if name == "max_length" else getattr(config.train, name) for name in space}


class BudgetAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that stores in Optuna what the study records in trials.csv:

    - every epoch as an intermediate value at step = epoch (Tune's training_iteration starts again
      at 1 when a trial's Train run is started again);
    - a trial that ASHA stopped is PRUNED at the epoch it reached (stock OptunaSearch tells it
      COMPLETE, and TPE would model a one-epoch score as a full-budget result); its value is
      that epoch's score, as Optuna gives a pruned trial its last intermediate value;
    - a trial that ran its epochs (or stopped by patience) is COMPLETE with its best epoch's score,
      the study's objective;
    - each Optuna trial carries Ray's trial id (user attribute `ray_trial_id`).

    The first trial asked gets points_to_evaluate[0] (the default configuration):
    `on_default_trial(trial_id)` hears its id.
    """

    def __init__(self, *args, on_default_trial=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.on_default_trial = on_default_trial

    def _setup_study(self, mode):
        # On --resume Tune sets up the searcher as it was pickled at the study's start, then
        # restores its saved state. The points were enqueued in the storage when the study began:
        # enqueuing them again would run the default configuration twice.
        points = self._points_to_evaluate
        if self._storage is not None and own_trials(self._storage, self._study_name):
            self._points_to_evaluate = []
        super()._setup_study(mode)
        self._points_to_evaluate = points

    def restore(self, checkpoint_path):
        super().restore(checkpoint_path)
        if self._storage is not None and self._ot_study is not None:
            self._catch_up_with_storage()

    def _catch_up_with_storage(self):
        """Tune saves this searcher every few seconds, but the storage holds every ask and tell: trials
        finished since the save stay finished, and trials asked since (Tune never heard of them) FAIL,
        an enqueued point among them going back into the queue."""
        stored = {t.number: t for t in self._ot_study.get_trials(deepcopy=False)}
        known = {trial.number for trial in self._ot_trials.values()}
        for trial_id, trial in self._ot_trials.items():
            if stored[trial.number].state.is_finished():
                self._completed_trials.add(trial_id)
        for number, trial in stored.items():
            if trial.state == optuna.trial.TrialState.RUNNING and number not in known:
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)
                if "fixed_params" in trial.system_attrs:
                    self._ot_study.enqueue_trial(trial.system_attrs["fixed_params"])

    def suggest(self, trial_id):
        is_default = not self._ot_trials and bool(self._points_to_evaluate)  # Optuna asks enqueued points first
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        if is_default and self.on_default_trial is not None:
            self.on_default_trial(trial_id)
        return params

    def on_trial_result(self, trial_id, result):
        if trial_id in self._completed_trials:
            return
        super().on_trial_result(trial_id, {**result, "training_iteration": result.get("epoch", result.get("training_iteration"))})

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result and not error and self.metric in result:
            # Tune does not pass the result a scheduler stops on (ASHA also stops at max_t) to on_trial_result
            with warnings.catch_warnings():  # "already reported": the step of a result that was passed
                warnings.simplefilter("ignore", UserWarning)
                self.on_trial_result(trial_id, result)
        if result and not error and stopped_by_scheduler(result):
            self._ot_study.tell(self._ot_trials[trial_id], None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        if result and f"best_{self.metric}" in result:  # the objective is the trial's best epoch, not its last
            result = {**result, self.metric: result[f"best_{self.metric}"]}
        super().on_trial_complete(trial_id, result=result, error=error)


def stopped_by_scheduler(result: dict) -> bool:
    """A trial's last result says the scheduler stopped it: fewer epochs than planned, not by patience."""
    return not result.get("stopped_by_patience") and result.get("epoch", 0) < result.get("planned_epochs", 0)


def make_searcher(config: Config, on_default_trial=None, storage_url: str | None = None) -> BudgetAwareOptunaSearch:
    """The study's searcher; with `storage_url` its Optuna study is `tune.study` in that storage."""
    tune_cfg = config.tune
    return BudgetAwareOptunaSearch(
        metric=tune_cfg.metric, mode=tune_cfg.mode,
        points_to_evaluate=[default_point(tune_cfg.search_space, config)],
        sampler=optuna.samplers.TPESampler(seed=tune_cfg.seed, n_startup_trials=min(5, tune_cfg.num_samples)),
        on_default_trial=on_default_trial,
        study_name=tune_cfg.study if storage_url else None,
        storage=optuna.storages.RDBStorage(storage_url) if storage_url else None,
    )


# ---------------------------------------------------------------- the study's Optuna storage

def optuna_storage_url(experiment: str) -> str | None:
    """The SQLite URL of a study's Optuna storage; None for a study on remote storage (s3://, gs://),
    whose Optuna study stays in memory."""
    if "://" in experiment:
        return None
    return f"sqlite:///{Path(experiment, *OPTUNA_DB)}"


def own_trials(storage, study_name: str) -> list:
    """The trials a study ran itself (not copied in by a warm start); none when it does not exist."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return [t for t in storage.get_all_trials(study_id, deepcopy=False) if WARM_START_ATTR not in t.user_attrs]


def begin_optuna_study(config: Config, storage_url: str) -> optuna.Study:
    """A new study's Optuna study, replacing one of the same name left from a study whose Tune
    state is gone (check_study refuses to start over a study that Tune can resume)."""
    Path(storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(storage_url)
    if config.tune.study in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=config.tune.study, storage=storage)
    study = optuna.create_study(storage=storage, study_name=config.tune.study,
                                direction="maximize" if config.tune.mode == "max" else "minimize")
    study.set_user_attr("metric", config.tune.metric)
    with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([config.tune.metric])  # optuna-dashboard names the objective as the report does
    return study


def load_source_study(source: str, storage_root: str) -> optuna.Study:
    """An earlier study for --warm-start: a study name under `storage_root`, its directory, its
    optuna.db, or an Optuna storage URL holding one study."""
    if "://" in source:
        url = source
    else:
        path = Path(source)
        if not path.exists() and "/" not in source:  # a study name
            path = Path(storage_root, source, *OPTUNA_DB)
        if path.is_dir():
            path = path.joinpath(*OPTUNA_DB)
        if not path.is_file():
            raise UserError(f"--warm-start {source}: no Optuna storage at {path} (give a study name under "
                            f"{storage_root}, a study directory, or an optuna.db file)")
        url = f"sqlite:///{path.resolve()}"
    try:
        names = optuna.get_all_study_names(url)
    except Exception as e:  # a file that is not an Optuna database, an unreachable server
        raise UserError(f"--warm-start {source}: cannot read an Optuna storage at {url}: {str(e).splitlines()[0]}")
    name = Path(source).name if Path(source).name in names else (names[0] if len(names) == 1 else None)
    if name is None:
        raise UserError(f"--warm-start {source}: {url} holds {len(names)} studies ({', '.join(names) or 'none'}); "
                        f"give the one to start from by its name")
    return optuna.load_study(study_name=name, storage=url)


def add_finished_trials(target: optuna.Study, source: optuna.Study, distributions: dict) -> tuple[int, int]:
    """Copy the source's COMPLETE trials, and its PRUNED ones with their per-epoch values, into the
    target with the parameters that the target searches; a trial with a value outside the target's
    ranges or choices is left out. Returns (added, left out)."""
    copies, left_out = [], 0
    for trial in source.get_trials(deepcopy=False, states=FINISHED):
        params = {name: value for name, value in trial.params.items() if name in distributions}
        try:
            copies.append(optuna.trial.create_trial(
                state=trial.state, value=trial.value, params=params,
                distributions={name: distributions[name] for name in params},
                intermediate_values=trial.intermediate_values,
                user_attrs={**trial.user_attrs, WARM_START_ATTR: source.study_name}))
        except ValueError:
            left_out += 1
    target.add_trials(copies)
    return len(copies), left_out


def warm_start(target: optuna.Study, source: optuna.Study, space: dict, metric: str) -> tuple[int, int]:
    """Start `target` (a new study, searching `space` for `metric`) from the finished trials of `source`."""
    if source.directions != target.directions or source.user_attrs.get("metric", metric) != metric:
        raise UserError(f"--warm-start {source.study_name}: that study's objective is "
                        f"{source.user_attrs.get('metric', '?')} ({source.direction.name.lower()}), this one's "
                        f"{metric} ({target.direction.name.lower()})")
    return add_finished_trials(target, source, OptunaSearch.convert_search_space(tune_search_space(space)))
