"""One console line of arxivcls's own per finished trial: n/N, how it ended, best so far, elapsed, ETA."""
import time

from ray.tune import Callback


class StudyProgress(Callback):
    def __init__(self, num_trials: int, metric: str, mode: str):
        self.num_trials, self.metric, self.mode = num_trials, metric, mode
        self.started, self.done, self.best = time.time(), 0, None

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
