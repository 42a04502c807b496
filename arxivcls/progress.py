"""arxivcls's own console lines for a study: each trial's start with its exact hyperparameters, and
one line per finished trial: n/N, how it ended, best so far, elapsed, ETA."""
import time

from ray.tune import Callback


def format_params(config: dict) -> str:
    return " ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in config.items())


class StudyProgress(Callback):
    def __init__(self, num_trials: int, metric: str, mode: str):
        self.num_trials, self.metric, self.mode = num_trials, metric, mode
        self.started, self.done, self.best, self.seen = time.time(), 0, None, set()

    def on_trial_start(self, iteration, trials, trial, **info):
        how = "continues" if trial.trial_id in self.seen else "starts"
        self.seen.add(trial.trial_id)
        print(f"arxivcls: trial {trial.trial_id} {how}: {format_params(trial.config)}", flush=True)

    def _line(self, trial, how: str) -> None:
        self.done += 1
        value = (trial.last_result or {}).get(f"best_{self.metric}")
        if value is not None and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = value
        elapsed = time.time() - self.started
        eta = elapsed / self.done * (self.num_trials - self.done)
        score = f"{self.metric} {value:.4f}" if value is not None else "no score"
        best = f"{self.best:.4f}" if self.best is not None else "n/a"
        print(f"arxivcls: trial {self.done}/{self.num_trials} {trial.trial_id} {how} ({score}); best so far {best}; "
              f"{elapsed / 60:.1f} min elapsed, about {eta / 60:.1f} min to go", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")
