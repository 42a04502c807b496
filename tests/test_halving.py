"""Synchronous successive halving (tune.scheduler: sync): the rule, its scheduler's decisions on
a fake Tune controller, the concurrency limiter, and the Ray snapshot repair that resuming needs."""
import json
from types import SimpleNamespace

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from arxivcls.halving import PausableLimiter, SynchronousHalving, rung_epochs, survivors
from arxivcls.rundir import RUNG_STATE, RunDir, forget_deleted_checkpoints, publish_checkpoint, save_rung_state


def test_rungs_and_survivors():
    assert rung_epochs(2, 2, 8) == [2, 4]
    assert rung_epochs(2, 3, 8) == [2, 6]
    assert rung_epochs(1, 2, 3) == [1, 2]
    assert rung_epochs(3, 2, 3) == []  # grace = budget: nothing to compare
    scores = {"a": 0.5, "b": 0.7, "c": float("nan"), "d": 0.6, "e": 0.1}
    assert survivors(scores, 2, "max") == ["b", "d", "a"]  # ceil(5 / 2) = 3; NaN ranks last
    assert survivors(scores, 3, "max") == ["b", "d"]
    assert survivors({"a": 1.2, "b": 0.9}, 2, "min") == ["b"]


class FakeController:
    """What the scheduler uses of Tune's controller: trials, stop_trial and the searcher."""

    def __init__(self, trial_ids):
        self.trials = [SimpleNamespace(trial_id=t, status=Trial.RUNNING) for t in trial_ids]
        self.stopped, self.paused = [], set()
        self.search_alg = SimpleNamespace(searcher=SimpleNamespace(on_pause=self.paused.add, on_unpause=self.paused.discard))

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.stopped.append(trial.trial_id)
        trial.status = Trial.TERMINATED

    def trial(self, trial_id):
        return next(t for t in self.trials if t.trial_id == trial_id)


def report(scheduler, controller, trial_id, epoch, score):
    decision = scheduler.on_trial_result(controller, controller.trial(trial_id), {"epoch": epoch, "val_macro_f1": score})
    if decision != TrialScheduler.CONTINUE:
        controller.trial(trial_id).status = Trial.PAUSED if decision == TrialScheduler.PAUSE else Trial.TERMINATED
    return decision


def test_every_trial_waits_at_a_rung_until_all_reach_it_then_the_best_half_go_on():
    controller = FakeController("abcd")
    marks = []
    scheduler = SynchronousHalving("val_macro_f1", "max", rungs=[1, 2], reduction_factor=2, num_trials=4,
                                   max_running=2, mark_continue=lambda t, e: marks.append((t, e)))
    for trial in controller.trials:
        scheduler.on_trial_add(controller, trial)

    assert report(scheduler, controller, "a", 1, 0.5) == TrialScheduler.PAUSE
    assert report(scheduler, controller, "b", 1, 0.7) == TrialScheduler.PAUSE
    assert scheduler.choose_trial_to_run(controller) is None  # nobody may resume before the rung is decided
    assert report(scheduler, controller, "c", 1, 0.1) == TrialScheduler.PAUSE
    assert controller.paused == {"a", "b", "c"} and not marks
    # the last trial completes rung 1: b (0.7) and d (0.6) go on, a and c stop
    assert report(scheduler, controller, "d", 1, 0.6) == TrialScheduler.CONTINUE
    assert sorted(controller.stopped) == ["a", "c"]
    assert sorted(marks) == [("b", 1), ("d", 1)]
    assert controller.paused == {"a", "c"}  # b unpaused for the limiter; a and c end (the limiter forgets them then)
    assert scheduler.choose_trial_to_run(controller).trial_id == "b"  # one running (d) < max_running 2

    controller.trial("b").status = Trial.RUNNING
    assert report(scheduler, controller, "b", 2, 0.8) == TrialScheduler.PAUSE
    assert report(scheduler, controller, "d", 2, 0.9) == TrialScheduler.CONTINUE  # ceil(2 / 2) = 1 goes on
    assert controller.stopped[-1] == "b" and marks[-1] == ("d", 2)
    assert report(scheduler, controller, "d", 3, 0.95) == TrialScheduler.CONTINUE  # past the last rung


def test_a_trial_that_ends_before_a_rung_does_not_hold_it_and_nothing_is_decided_before_all_trials_exist():
    controller = FakeController("abc")
    marks = []
    scheduler = SynchronousHalving("val_macro_f1", "max", rungs=[2], reduction_factor=2, num_trials=3,
                                   max_running=1, mark_continue=lambda t, e: marks.append((t, e)))
    for trial in controller.trials[:2]:
        scheduler.on_trial_add(controller, trial)
    assert report(scheduler, controller, "a", 2, 0.5) == TrialScheduler.PAUSE
    controller.trial("b").status = Trial.TERMINATED
    scheduler.on_trial_complete(controller, controller.trial("b"), {})  # b stopped by patience at epoch 1
    assert not marks  # trial c has not even been created: rung 2 stays open
    scheduler.on_trial_add(controller, controller.trial("c"))
    assert report(scheduler, controller, "c", 2, 0.4) == TrialScheduler.STOP  # ceil(2 / 2): only a goes on
    assert marks == [("a", 2)] and scheduler.choose_trial_to_run(controller).trial_id == "a"


def test_limiter_does_not_count_paused_trials():
    from ray.tune.search import Searcher

    class Stub(Searcher):
        def suggest(self, trial_id):
            return {"x": 1}

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

    limiter = PausableLimiter(Stub(metric="m", mode="max"), max_concurrent=2)
    assert limiter.suggest("a") and limiter.suggest("b")
    assert limiter.suggest("c") is None  # two running
    limiter.on_pause("a")
    assert limiter.suggest("c") == {"x": 1}  # a waits at a rung and holds nothing
    assert limiter.suggest("d") is None
    limiter.on_unpause("a")
    limiter.on_trial_complete("b")
    assert limiter.suggest("d") is None  # a and c run again


def test_snapshot_forgets_deleted_checkpoints(tmp_path):
    run = tmp_path / "train-x"
    (run / "checkpoint_2").mkdir(parents=True)
    entry = lambda name: {"version": 0, "checkpoint_dir_name": name, "metrics": {"epoch": int(name[-1])}}
    snapshot = {"ray_version": "2.60.0", "checkpoint_results": [entry("checkpoint_1"), entry("checkpoint_2")],
                "checkpoint_report_indices": [0, 1], "latest_checkpoint_result": entry("checkpoint_2"),
                "pending_training_results": [], "pending_validation_specs": [], "current_report_index": 2}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    forget_deleted_checkpoints(run)  # checkpoint_1 was deleted by publish_checkpoint (keep 1)
    repaired = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    assert [r["checkpoint_dir_name"] for r in repaired["checkpoint_results"]] == ["checkpoint_2"]
    assert repaired["checkpoint_report_indices"] == [1] and repaired["current_report_index"] == 2
    assert repaired["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoint_2"


@pytest.mark.parametrize("text", ["{}", '{"checkpoint_results": [], "checkpoint_report_indices": [1]}'])
def test_snapshot_of_unknown_shape_left_alone(tmp_path, text):
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(text)
    forget_deleted_checkpoints(tmp_path)
    assert (tmp_path / "checkpoint_manager_snapshot.json").read_text() == text


def test_optuna_hears_stopped_and_paused_trials_as_pruned_at_their_epoch():
    import optuna

    from arxivcls.config import Config
    from arxivcls.search import make_searcher, tune_search_space

    config = Config()
    config.tune.num_samples = 4
    config.tune.search_space = {"learning_rate": {"type": "loguniform", "low": 1e-5, "high": 1e-3}}
    searcher = make_searcher(config)
    searcher.set_search_properties(None, None, tune_search_space(config.tune.search_space))
    for trial_id in "abcd":
        assert searcher.suggest(trial_id) is not None
    result = lambda epoch, f1, **extra: {"epoch": epoch, "planned_epochs": 4, "val_macro_f1": f1, "training_iteration": 1, **extra}

    searcher.on_trial_result("a", result(1, 0.1))
    searcher.on_trial_complete("a", result(2, 0.2))  # stopped by ASHA at epoch 2
    searcher.on_trial_complete("b", result(3, 0.25, stopped_by_patience=1, best_val_macro_f1=0.3))  # a finished result
    searcher.on_pause("c")  # tune.scheduler: sync paused it at rung 2...
    searcher.on_trial_result("c", result(2, 0.4))
    searcher.on_trial_result("c", result(3, 0.5))  # ...and it went on later
    searcher.on_trial_complete("c", result(4, 0.6))
    searcher.on_trial_result("d", result(1, 0.05))
    searcher.on_trial_complete("d", result(4, 0.7))  # ran the whole budget

    trials = {t.number: t for t in searcher._ot_study.get_trials()}
    a, b, c, d = (trials[n] for n in range(4))
    assert a.state == optuna.trial.TrialState.PRUNED and a.intermediate_values == {1: 0.1, 2: 0.2}
    assert b.state == optuna.trial.TrialState.COMPLETE and b.value == pytest.approx(0.3)  # its best epoch's
    assert c.state == optuna.trial.TrialState.PRUNED and c.intermediate_values == {2: 0.4}
    assert d.state == optuna.trial.TrialState.COMPLETE and d.value == pytest.approx(0.7)


def test_a_trial_paused_at_a_rung_that_was_not_its_best_resumes_from_the_rung_state(tmp_path):
    run, where = tmp_path / "train-x", RunDir(str(tmp_path), "train-x")

    def write(directory):
        directory.mkdir(parents=True)
        (directory / "weights").write_text("epoch")

    publish_checkpoint(run, write, keep=1)  # epoch 1 improved
    save_rung_state(run, write)  # epoch 2, a rung, did not
    with where.restore_point() as point:
        assert point == run / RUNG_STATE
    publish_checkpoint(run, write, keep=1)  # epoch 3 improved: the rung state is superseded
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("checkpoint_")) == []
    with where.restore_point() as point:
        assert point.name.startswith("checkpoint_") and len(list(run.glob("checkpoint_*"))) == 1


def test_rung_decisions_survive_a_restart_of_the_study():
    """--resume: Tune restores the scheduler as it was created; it reloads its saved decisions."""
    saved = {}
    make = lambda: SynchronousHalving("val_macro_f1", "max", rungs=[1], reduction_factor=2, num_trials=3, max_running=2,
                                      mark_continue=lambda t, e: saved.setdefault("marks", []).append((t, e)),
                                      save_state=lambda text: saved.update(state=text), load_state=lambda: saved.get("state"))
    controller = FakeController("abc")
    before = make()
    for trial in controller.trials:
        before.on_trial_add(controller, trial)
    assert report(before, controller, "a", 1, 0.9) == TrialScheduler.PAUSE
    assert report(before, controller, "b", 1, 0.1) == TrialScheduler.PAUSE

    after = make()  # the study driver was killed; the restored study re-adds its trials
    for trial in controller.trials:
        after.on_trial_add(controller, trial)
    assert after.added == ["a", "b", "c"]
    assert report(after, controller, "a", 1, 0.9) == TrialScheduler.PAUSE  # its driver reports the rung again
    assert report(after, controller, "c", 1, 0.5) == TrialScheduler.CONTINUE  # b's score was not lost: a, c go on
    assert controller.stopped == ["b"] and sorted(saved["marks"]) == [("a", 1), ("c", 1)]
