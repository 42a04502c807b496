"""Synchronous successive halving (`tune.scheduler: sync`): every trial waits at each rung until
all the trials that may reach it have, then the best 1/reduction_factor go on and the rest stop.

Why, next to Ray's asynchronous ASHA: ASHA promotes a trial it cannot compare, so in a small
study the first trials, which find the rungs empty, run the whole budget (benchmarks/hpo_efficiency:
8 trials two at a time spent 58% of the full budget where the synchronous rule spends <= 50%).
Ray's own synchronous HyperBandScheduler fixes neither its grace period (it derives it from
max_t) nor the trial count of its brackets, so this is the plain rule, in three pieces:

- the scheduler PAUSEs a trial that reports a rung epoch before the rung is complete; Tune then
  stops its driver (a paused trial holds no CPU) and later restarts the promoted ones, whose Train
  run resumes from its newest checkpoint (rundir.RunDir.restore_point);
- it writes a `continue` marker into a trial's run directory when the trial may go on past a
  rung: the training loop waits for it at every rung epoch (rundir.RunDir.wait_for_rung), so it never
  trains past a rung the study has not decided, and a paused trial loses no epoch it reported;
- the searcher's ConcurrencyLimiter does not count paused trials (PausableLimiter), so new trials
  start while earlier ones wait; and Optuna hears of a paused trial as PRUNED at its rung
  (search.BudgetAwareOptunaSearch), so TPE learns from the rungs before every trial is proposed.
"""
import json
import math

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter


def rung_epochs(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The epochs at which trials are compared: grace, grace * rf, ... below the full budget."""
    rungs, epoch = [], grace_period
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs


def survivors(scores: dict, reduction_factor: int, mode: str) -> list:
    """The best ceil(n / rf) of {trial: score}; a missing (NaN) score ranks last."""
    def key(item):
        value = item[1]
        if value != value:  # NaN
            return math.inf
        return -value if mode == "max" else value
    ranked = [trial for trial, _ in sorted(scores.items(), key=key)]
    return ranked[:math.ceil(len(ranked) / reduction_factor)]


class PausableLimiter(ConcurrencyLimiter):
    """A ConcurrencyLimiter that does not count trials paused at a rung: they hold no resources."""

    def __init__(self, searcher, max_concurrent: int):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.paused = set()

    def suggest(self, trial_id):
        if len(self.live_trials - self.paused) >= self.max_concurrent:
            return None
        saved, self.max_concurrent = self.max_concurrent, self.max_concurrent + len(self.paused & self.live_trials)
        try:
            return super().suggest(trial_id)
        finally:
            self.max_concurrent = saved

    def on_pause(self, trial_id):
        self.paused.add(trial_id)
        if hasattr(self.searcher, "on_pause"):  # (Ray's base Searcher has no pause hooks)
            self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id):
        self.paused.discard(trial_id)
        if hasattr(self.searcher, "on_unpause"):
            self.searcher.on_unpause(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.paused.discard(trial_id)
        super().on_trial_complete(trial_id, result=result, error=error)


class SynchronousHalving(FIFOScheduler):
    def __init__(self, metric: str, mode: str, rungs: list[int], reduction_factor: int, num_trials: int,
                 max_running: int, mark_continue, save_state=None, load_state=None, time_attr: str = "epoch"):
        """mark_continue(trial_id, epoch) writes the trial's continue marker (rundir.RunDir.mark_continue).
        save_state(text) / load_state() -> text | None keep the rung decisions in the study's
        directory, for --resume: Tune restores a scheduler as it was when the study was created."""
        super().__init__()
        self._metric, self._mode, self.time_attr = metric, mode, time_attr
        self.rungs, self.reduction_factor = list(rungs), reduction_factor
        self.num_trials, self.max_running = num_trials, max_running
        self.mark_continue, self.save_state, self.load_state = mark_continue, save_state, load_state
        self.added: list[str] = []  # trial ids in the order Tune created them
        self.scores = {rung: {} for rung in self.rungs}  # rung -> {trial_id: metric at that epoch}
        self.advancing = {}  # rung -> trial ids that go on past it, once the rung is decided
        self.ended: set[str] = set()  # completed, stopped or errored for good
        self.promoted: set[str] = set()  # paused trials to restart
        self.loaded = False

    # ---------------------------------------------------------------- state kept for --resume

    def _load(self):
        if self.loaded:
            return
        self.loaded = True
        text = self.load_state() if self.load_state else None
        if text:
            # not `added`: Tune adds the trials it restored again, and one created in the last
            # moments before the study stopped may be unknown to it (it must not hold a rung open)
            state = json.loads(text)
            self.scores.update({int(r): scores for r, scores in state["scores"].items()})
            self.advancing = {int(r): set(ids) for r, ids in state["advancing"].items()}
            self.ended = set(state["ended"])

    def _save(self):
        if self.save_state:
            self.save_state(json.dumps({"scores": self.scores, "ended": sorted(self.ended),
                                        "advancing": {r: sorted(ids) for r, ids in self.advancing.items()}}))

    # ---------------------------------------------------------------- Tune's callbacks

    def on_trial_add(self, tune_controller, trial):
        self._load()
        if trial.trial_id not in self.added:
            self.added.append(trial.trial_id)

    def on_trial_result(self, tune_controller, trial, result):
        self._load()
        self.promoted.discard(trial.trial_id)
        epoch = result.get(self.time_attr)
        if epoch not in self.scores or self._metric not in result:
            return TrialScheduler.CONTINUE
        if epoch in self.advancing:  # decided already (a replayed report)
            return TrialScheduler.CONTINUE if trial.trial_id in self.advancing[epoch] else TrialScheduler.STOP
        self.scores[epoch][trial.trial_id] = result[self._metric]
        decision = self._decide(tune_controller, current=trial.trial_id)
        self._save()
        if decision is None:
            tune_controller.search_alg.searcher.on_pause(trial.trial_id)
            return TrialScheduler.PAUSE
        return decision

    def on_trial_complete(self, tune_controller, trial, result):
        self._end(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._end(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        self._end(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        running = sum(t.status == Trial.RUNNING for t in trials)
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self.promoted and running < self.max_running:
                return trial
        return None

    def debug_string(self) -> str:
        decided = ", ".join(f"epoch {r}: {len(self.advancing[r])}/{len(self.scores[r])} go on" for r in self.advancing)
        return f"Synchronous successive halving at epochs {self.rungs}" + (f" ({decided})" if decided else "")

    # ---------------------------------------------------------------- the rule

    def _end(self, tune_controller, trial):
        self._load()
        if trial.trial_id in self.ended:
            return
        self.ended.add(trial.trial_id)
        self.promoted.discard(trial.trial_id)
        self._decide(tune_controller, current=None)
        self._save()

    def _decide(self, tune_controller, current: str | None):
        """Decide every rung that is complete, in order. Returns CONTINUE or STOP for the trial
        `current` if its rung was decided now, else None (it waits)."""
        decision = None
        population = self.added if len(self.added) >= self.num_trials else None
        for rung in self.rungs:
            if population is None:
                break
            if rung not in self.advancing:
                scores = {t: v for t, v in self.scores[rung].items() if t in population}
                if any(t not in scores and t not in self.ended for t in population):
                    break  # some trial may still reach this rung
                self.advancing[rung] = set(survivors(scores, self.reduction_factor, self._mode))
                decision = self._apply(tune_controller, rung, scores, current) or decision
            population = [t for t in population if t in self.advancing[rung]]
        return decision

    def _apply(self, tune_controller, rung: int, scores: dict, current: str | None):
        by_id = {t.trial_id: t for t in tune_controller.get_trials()}
        decision = None
        for trial_id in scores:
            goes_on = trial_id in self.advancing[rung]
            if goes_on:
                self.mark_continue(trial_id, rung)
            if trial_id == current:
                decision = TrialScheduler.CONTINUE if goes_on else TrialScheduler.STOP
            elif trial_id in self.ended:
                continue
            elif goes_on:
                self.promoted.add(trial_id)
                tune_controller.search_alg.searcher.on_unpause(trial_id)
            else:
                tune_controller.stop_trial(by_id[trial_id])
        return decision
