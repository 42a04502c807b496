"""Faults injected for real: processes killed by pid, then the study resumes (slow).

Each test runs the CLI in its own process session, with its own local Ray cluster, and kills only
what it started (by pid / process group), never other Ray clusters on the machine.
"""
import os
import re
import signal
import subprocess
import sys
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


def kill_session(process):
    """SIGKILL the CLI's whole process group: the driver and the local Ray cluster it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


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
        finished = read_until(process, r"Trial (\S+) completed after", 600, seen).group(1)
        read_until(process, r"Trial (\S+) started", 300, seen)  # the next trial is under way: kill mid-study
    finally:
        kill_session(process)
    assert not (tmp_path / "results" / "killed" / "trials.csv").exists()

    seen_resume = []
    resumed = start_cli("tune", str(config), "--resume", cwd=tmp_path)
    output = finish(resumed, 900, seen_resume)
    assert resumed.returncode == 0, output[-3000:]
    assert f"Trial {finished} started" not in output  # a finished trial is not run again
    trials = pd.read_csv(tmp_path / "results" / "killed" / "trials.csv")
    assert len(trials) == 4 and trials.best_metric.notna().all()
    assert (tmp_path / "results" / "killed" / "comparison.csv").is_file()
    import reliability

    reliability.record("fault", "`arxivcls tune` driver SIGKILLed mid-study, then `--resume`",
                       f"finished trial {finished} not re-run; the study completed with all 4 trials in trials.csv")


def test_train_worker_killed_mid_trial_resumes_from_checkpoint(tmp_path, papers_file, tiny_bert):
    # epochs of a few seconds: the kill must land while the run is still training
    config = tiny_study_yaml(tmp_path, papers_file, tiny_bert, data={"max_length": 256},
                             train={"cpus_per_worker": 2, "epochs": 5, "learning_rate": 1e-3, "max_failures": 2, "batch_size": 8},
                             tune={"num_samples": 1, "study": "workerkill"}, eval={"baseline": False, "logit_adjust": False})
    seen = []
    process = start_cli("tune", str(config), cwd=tmp_path)
    try:
        pid = int(read_until(process, r"RayTrainWorker pid=(\d+)[^)]*\).*epoch 1/5", 600, seen).group(1))
        os.kill(pid, signal.SIGKILL)  # the worker dies after epoch 1's checkpoint, during a later epoch
        output = finish(process, 900, seen)
    except BaseException:
        kill_session(process)
        raise
    assert process.returncode == 0, output[-3000:]
    resumed_after = int(re.search(r"resumed from checkpoint after epoch (\d)", output).group(1))
    assert 1 <= resumed_after < 5
    trials = pd.read_csv(tmp_path / "results" / "workerkill" / "trials.csv")
    assert trials.status.tolist() == ["completed"] and trials.epochs_run.tolist() == [5]
    history = pd.read_csv(tmp_path / "results" / "workerkill" / "history.csv")
    assert history.epoch.tolist() == [1, 2, 3, 4, 5]  # epochs monotonic across the restart, none lost or repeated
    import reliability

    reliability.record("fault", "Ray Train worker SIGKILLed mid-trial",
                       f"worker group restarted (train.max_failures), resumed from the checkpoint of epoch {resumed_after}; "
                       "trial completed all 5 epochs, each reported once")
