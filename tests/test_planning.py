"""Resource planning: never more concurrent trials than the free resources fit."""
import pytest

from arxivcls.config import TrainConfig
from arxivcls.errors import UserError
from arxivcls.tuning import TRIAL_DRIVER_RESOURCES, check_disk, plan_concurrency, trial_resources


def test_two_cpu_machine_one_cpu_workers_runs_two_trials_without_a_driver_cpu():
    # The case that deadlocked: a 1-CPU driver per trial + a 1-CPU worker per trial on 2 CPUs.
    train = TrainConfig(num_workers=1, cpus_per_worker=1)
    assert TRIAL_DRIVER_RESOURCES.get("CPU", 0) == 0 and TRIAL_DRIVER_RESOURCES.get("GPU", 0) == 0
    concurrency = plan_concurrency({"CPU": 2.0}, train, num_samples=6)
    assert concurrency == 2
    assert concurrency * (trial_resources(train)["CPU"] + TRIAL_DRIVER_RESOURCES["CPU"]) <= 2


@pytest.mark.parametrize("available, train, samples, limit, expected", [
    ({"CPU": 2.0}, TrainConfig(cpus_per_worker=2), 6, 0, 1),
    ({"CPU": 2.0}, TrainConfig(cpus_per_worker=1, num_workers=2), 6, 0, 1),
    ({"CPU": 16.0}, TrainConfig(cpus_per_worker=1), 3, 0, 3),  # never more than trials
    ({"CPU": 16.0}, TrainConfig(cpus_per_worker=1), 10, 4, 4),  # explicit cap
    ({"CPU": 64.0, "GPU": 4.0}, TrainConfig(cpus_per_worker=4, gpus_per_worker=1, num_workers=2), 16, 0, 2),
    ({"CPU": 64.0, "GPU": 1.0}, TrainConfig(cpus_per_worker=2, gpus_per_worker=0.25), 16, 0, 4),  # fractional GPUs
    ({"CPU": 6.0, "GPU": 8.0}, TrainConfig(cpus_per_worker=4, gpus_per_worker=1), 16, 0, 1),  # CPU-bound
])
def test_concurrency_fits_every_resource(available, train, samples, limit, expected):
    concurrency = plan_concurrency(available, train, samples, limit)
    assert concurrency == expected
    for resource, amount in trial_resources(train).items():
        assert concurrency * amount <= available[resource] + 1e-9


def test_a_trial_that_cannot_fit_is_refused_unless_an_autoscaler_is_trusted():
    gpu_trial = TrainConfig(gpus_per_worker=1)
    with pytest.raises(UserError, match="one trial needs CPU=1, GPU=1 but the Ray cluster has only CPU=2, GPU=0"):
        plan_concurrency({"CPU": 2.0}, gpu_trial, 4)
    assert plan_concurrency({"CPU": 2.0}, gpu_trial, 4, max_concurrent=2) == 2  # GPU nodes come up on demand


def test_disk_check_refuses_when_space_is_short(tmp_path):
    assert check_disk(str(tmp_path), 10, 0)["free_gb"] > 0
    with pytest.raises(UserError, match="GB free but the study may need"):
        check_disk(str(tmp_path / "not" / "yet"), 10**18, 0)
    assert check_disk("s3://bucket/path", 10**18, 0)["free_gb"] is None
