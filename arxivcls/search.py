"""A study's search space as Tune domains, and the Optuna (TPE) searcher that proposes trials.

Imports optuna and Ray Tune: import it where a study is set up, not from light modules.
"""
import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from arxivcls.config import Config, TrainConfig


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


def default_point(space: dict, train: TrainConfig) -> dict:
    """The config's own `train` values, expressed in the searched parameters."""
    return {name: getattr(train, name) for name in space}


class BudgetAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna the truth about trials stopped early: PRUNED at the epoch
    they reached, with their score there; not COMPLETE. A finished trial's value is its best
    epoch's score (the study's objective), not its last epoch's.

    A trial paused at a rung (tune.scheduler: sync) is told PRUNED there at once (on_pause); one
    that later goes on sends Optuna nothing more. The first trial asked gets points_to_evaluate[0]
    (the default configuration): `on_default_trial(trial_id)` hears its id.
    """

    def __init__(self, *args, on_default_trial=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._prune_at_next_result = set()
        self.on_default_trial = on_default_trial

    def suggest(self, trial_id):
        is_default = not self._ot_trials and bool(self._points_to_evaluate)  # Optuna asks enqueued points first
        params = super().suggest(trial_id)
        if is_default and self.on_default_trial is not None:
            self.on_default_trial(trial_id)
        return params

    def on_pause(self, trial_id):
        self._prune_at_next_result.add(trial_id)

    def on_unpause(self, trial_id):
        pass

    def on_trial_result(self, trial_id, result):
        if trial_id in self._completed_trials:  # told PRUNED at a rung, and went on
            return
        # Optuna's step is the epoch: a trial restarted after a pause counts Tune's
        # training_iteration from 1 again, and Optuna ignores repeated steps.
        super().on_trial_result(trial_id, {**result, "training_iteration": result.get("epoch", result.get("training_iteration"))})
        if trial_id in self._prune_at_next_result:
            self._prune_at_next_result.discard(trial_id)
            self._prune(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        if trial_id in self._completed_trials:
            return
        stopped_early = (result and not error and not result.get("stopped_by_patience")
                         and result.get("epoch", 0) < result.get("planned_epochs", 0))
        if stopped_early and trial_id in self._ot_trials:
            # Tune does not pass a STOPped trial's last result to on_trial_result
            if self.metric in result:
                self._ot_trials[trial_id].report(result[self.metric], result["epoch"])
            self._prune(trial_id)
            return
        if result and f"best_{self.metric}" in result:  # the objective is the trial's best epoch, not its last
            result = {**result, self.metric: result[f"best_{self.metric}"]}
        super().on_trial_complete(trial_id, result=result, error=error)

    def _prune(self, trial_id):
        self._ot_study.tell(self._ot_trials[trial_id], None, state=optuna.trial.TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_searcher(config: Config, on_default_trial=None) -> BudgetAwareOptunaSearch:
    tune_cfg = config.tune
    return BudgetAwareOptunaSearch(
        metric=tune_cfg.metric, mode=tune_cfg.mode,
        points_to_evaluate=[default_point(tune_cfg.search_space, config.train)],
        sampler=optuna.samplers.TPESampler(seed=tune_cfg.seed, n_startup_trials=min(5, tune_cfg.num_samples)),
        on_default_trial=on_default_trial,
    )
