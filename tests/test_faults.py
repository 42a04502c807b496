"""Faults injected for real: processes killed by pid, then the study resumes (slow).

Each test runs the CLI in its own process session, with its own local Ray cluster, and kills only
what it started (by pid / process group), never other Ray clusters on the machine.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from conftest import tiny_study_yaml

pytestmark = pytest.mark.slow


def start_cli(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    return subprocess.Popen([sys.executable, "-m", "arxivcls.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def read_until(process, pattern, timeout, seen):
    """Read output lines until one matches `pattern`; returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matched {pattern!r} within {timeout}s:\n{''.join(seen[-40:])}")


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`."""
    table = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 2) for line in table.splitlines()]
    children = {}
    for pid, ppid, *args in rows:
        children.setdefault(int(ppid), []).append((int(pid), args[0] if args else ""))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def registered_checkpoints(experiment) -> list[str]:
    """Checkpoints Ray Train has recorded in its snapshot (a directory on disk may still be uploading)."""
    for snapshot in experiment.glob("train-*/checkpoint_manager_snapshot.json"):
        try:
            return [r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
        except (ValueError, KeyError, OSError):
            pass
    return []


def kill_session(process):
    """SIGKILL the CLI's whole process group: the driver and the local Ray cluster it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


class Watched:
    """The CLI started by start_cli, its output collected by a thread (a full pipe would block it)."""

    def __init__(self, *args, cwd):
        self.process = start_cli(*args, cwd=cwd)
        self.lines = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    def wait_for(self, condition, timeout=600, poll=0.1):
        """Poll condition() until it returns something true, and return that; fails if the CLI exits first."""
        deadline = time.time() + timeout
        while not (found := condition()):
            assert time.time() < deadline and self.process.poll() is None, "".join(self.lines[-40:])
            time.sleep(poll)
        return found

    def output(self, timeout) -> str:
        """Wait for the CLI to exit; all it printed."""
        self.process.wait(timeout)
        self.reader.join(60)
        return "".join(self.lines)


def finish(process, timeout, seen):
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        kill_session(process)
    seen.append(out)
    return "".join(seen)


def test_tune_driver_killed_then_resumed_does_not_rerun_finished_trials(tmp_path, papers_file, tiny_bert):
    config = tiny_study_yaml(tmp_path, papers_file, tiny_bert, train={"cpus_per_worker": 2, "epochs": 2},
                             tune={"num_samples": 4, "study": "killed"})
    seen = []
    process = start_cli("tune", str(config), cwd=tmp_path)
    try:
        finished_id = read_until(process, r"arxivcls: trial \d+/\d+ (\S+) finished", 600, seen).group(1)
        read_until(process, r"arxivcls: trial \S+ starts", 300, seen)  # the next trial is under way: kill mid-study
    finally:
        kill_session(process)
    assert not (tmp_path / "results" / "killed" / "trials.csv").exists()

    seen_resume = []
    resumed = start_cli("tune", str(config), "--resume", cwd=tmp_path)
    output = finish(resumed, 900, seen_resume)
    assert resumed.returncode == 0, output[-3000:]
    # A finished trial is not trained again: either Tune knew it had finished, or (killed within
    # Tune's 2 s bookkeeping window) Ray resumes its Train run after its last epoch, which reports that again.
    replayed = "its run had finished: its last result again, nothing retrained" in output
    assert f"arxivcls: trial {finished_id} starts" not in output or replayed
    trials = pd.read_csv(tmp_path / "results" / "killed" / "trials.csv")
    assert len(trials) == 4 and trials.best_metric.notna().all()
    history = pd.read_csv(tmp_path / "results" / "killed" / "history.csv")
    epochs = history[history.trial_id == finished_id].epoch.tolist()
    assert epochs == sorted(set(epochs)) and epochs[-1] == trials.set_index("trial_id").epochs_run[finished_id]
    assert epochs == list(range(1, epochs[-1] + 1))
    assert (tmp_path / "results" / "killed" / "comparison.csv").is_file()
    import reliability

    reliability.record("fault", "`arxivcls tune` driver SIGKILLed mid-study, then `--resume`",
                       f"finished trial {finished_id} not re-trained{' (its last result reported again)' if replayed else ''}; "
                       "the study completed with all 4 trials in trials.csv")


def test_a_study_with_a_stopped_a_continued_and_a_resumed_trial_leaves_every_store_in_agreement(tmp_path, papers_file, tiny_bert):
    """Trial 1 (the default, lr 2e-3) has its Train worker SIGKILLed during epoch 2 and resumes from
    Ray's checkpoint; trial 2 (lr 1e-7, TPE's first random draw at seed 0) is stopped by ASHA at
    epoch 1; trial 3 (lr 2e-3 again) continues past that rung. Then optuna.db, TensorBoard, MLflow,
    trials.csv, history.csv and study.json must hold the same statuses, values and epochs."""
    from stores import disagreements

    # epochs of a few seconds: the kill must land while the run is still training
    config = tiny_study_yaml(tmp_path, papers_file, tiny_bert, data={"max_length": 256},
                             train={"cpus_per_worker": 2, "epochs": 3, "learning_rate": 2e-3, "max_failures": 2,
                                    "batch_size": 8, "patience": 10},
                             tune={"num_samples": 3, "study": "agree", "seed": 0, "tracking": ["tensorboard", "mlflow"],
                                   "search_space": {"learning_rate": {"type": "choice", "values": [2e-3, 1e-7]}}},
                             eval={"baseline": False, "logit_adjust": False})
    experiment = tmp_path / "runs" / "agree"
    run = Watched("tune", str(config), cwd=tmp_path)
    try:
        # Worker logs reach the driver seconds late, so watch the disk: kill the worker as soon as
        # Ray Train has registered epoch 1's checkpoint, i.e. during epoch 2 of the first trial.
        run.wait_for(lambda: registered_checkpoints(experiment), poll=0.2)
        workers = [pid for pid, args in descendants(run.process.pid) if "RayTrainWorker" in args]
        assert len(workers) == 1, workers
        os.kill(workers[0], signal.SIGKILL)
        output = run.output(900)
    finally:
        kill_session(run.process)
    assert run.process.returncode == 0, output[-3000:]
    resumed = re.search(r"resumed from checkpoint after epoch (\d)", output)
    assert resumed, "\n".join(l for l in output.splitlines() if re.search(r"epoch \d/|resum|died|Worker|restart|fail", l))[-6000:]
    trials = pd.read_csv(tmp_path / "results" / "agree" / "trials.csv").set_index("trial_id")
    assert trials.status.tolist() == ["completed", "stopped_by_asha", "completed"], trials
    assert trials.epochs_run.tolist() == [3, 1, 3]
    history = pd.read_csv(tmp_path / "results" / "agree" / "history.csv")
    assert history[history.trial_id == trials.index[0]].epoch.tolist() == [1, 2, 3]  # none lost or repeated across the restart
    assert disagreements(tmp_path / "results" / "agree", experiment,
                         mlflow_uri=f"sqlite:///{experiment / 'mlflow' / 'mlflow.db'}") == []
    import reliability

    reliability.record("fault", "Ray Train worker SIGKILLed mid-trial",
                       f"worker group restarted (train.max_failures), resumed from Ray's checkpoint of epoch {resumed.group(1)}; "
                       "every epoch reported once; Optuna, TensorBoard, MLflow and trials.csv agree trial by trial")
