"""A study whose second trial is made to fail (its Train worker SIGKILLed, no retries): the study
still writes its results, then exits 2 naming the trial; and its console shows each worker line
once, arxivcls's own progress lines, how to open the dashboard, none of Ray's noise (slow)."""
import os
import re
import signal
from collections import Counter

import pandas as pd
import pytest

from conftest import tiny_study_yaml
from test_faults import Watched, descendants, kill_session

pytestmark = pytest.mark.slow


def test_a_failed_trial_makes_the_study_exit_2_after_writing_its_results(tmp_path, papers_file, tiny_bert):
    config = tiny_study_yaml(tmp_path, papers_file, tiny_bert, data={"max_length": 256},
                             train={"cpus_per_worker": 2, "epochs": 3, "max_failures": 0, "batch_size": 8, "patience": 10},
                             tune={"num_samples": 2, "study": "failing", "max_failures": 0, "grace_period": 3,
                                   "search_space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 3e-3}}},
                             eval={"logit_adjust": False})
    run = Watched("tune", str(config), cwd=tmp_path)
    first_trial_workers = set()

    def second_trial_worker_in_its_loop():  # trials run one at a time (each takes both CPUs)
        workers = {pid for pid, args in descendants(run.process.pid) if "RayTrainWorker" in args}
        if not any("arxivcls: trial 1/2" in line for line in run.lines):
            first_trial_workers.update(workers)
            return None
        started = [pid for pid in workers - first_trial_workers  # in its training loop (a failure while starting is retried)
                   if any(f"RayTrainWorker pid={pid})" in line and "worker 0/1" in line for line in run.lines[-50:])]
        return started[0] if started else None

    try:
        os.kill(run.wait_for(second_trial_worker_in_its_loop), signal.SIGKILL)
        output = run.output(600)
    finally:
        kill_session(run.process)

    assert run.process.returncode == 2, output[-3000:]
    trials = pd.read_csv(tmp_path / "results" / "failing" / "trials.csv")
    assert sorted(trials.status) == ["completed", "error"], trials
    failed_id = trials[trials.status == "error"].trial_id.iloc[0]
    assert re.search(rf"^error: 1 of 2 trials failed \({failed_id}\); their errors and logs are under .*runs/failing",
                     output, re.MULTILINE), output[-2000:]
    assert (tmp_path / "results" / "failing" / "report.md").is_file()  # the finished trial was evaluated

    assert re.search(r"arxivcls: trial 1/2 \w+ finished \(val_macro_f1 [\d.]+\); best so far", output)
    assert re.search(rf"arxivcls: trial 2/2 {failed_id} failed", output)
    assert re.search(r"arxivcls: trial \w+ starts: learning_rate=", output)
    assert "`ray get-auth-token` prints it" in output
    worker_lines = Counter(line for line in output.splitlines() if re.search(r"RayTrainWorker pid=\d+\S* (worker \d/|epoch \d/)", line))
    assert worker_lines and max(worker_lines.values()) == 1, worker_lines.most_common(3)
    for noise in ("PreemptionWatcher", "Logical resource usage", "tensorboard --logdir /tmp/ray", "created in memory",
                  "max_concurrent_trials", "Writing model shards", "Progress bars disabled"):
        assert noise not in output

