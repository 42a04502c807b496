"""Joining a Ray cluster (`--address` / RAY_ADDRESS), or starting a local one."""
import contextvars
import logging
import os
import socket
import time
from contextlib import contextmanager

# Whether a Ray runtime that arxivcls starts prints its workers' output here (the CLI) or leaves
# it in Ray's log files only (the Python API: a notebook cell shows arxivcls's own lines).
_WORKER_OUTPUT = contextvars.ContextVar("arxivcls_worker_output", default=True)


@contextmanager
def worker_output(to_driver: bool):
    """Within it, connect_ray starts or joins Ray with log_to_driver=to_driver."""
    token = _WORKER_OUTPUT.set(to_driver)
    try:
        yield
    finally:
        _WORKER_OUTPUT.reset(token)


def connect_ray(address: str | None = None, log=print) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local cluster; a Ray runtime this process
    already started or joined (the user's own `ray.init()`) is used as it is."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            info = ray.init(address=address, logging_level="WARNING", log_to_driver=_WORKER_OUTPUT.get())
        else:
            info = start_local_ray(log_to_driver=_WORKER_OUTPUT.get())
        log(f"ray: {'joined ' + address if address else 'started a local cluster'}; " + dashboard_line(info.dashboard_url))
    quiet_ray_data()


def quiet_ray_data() -> None:
    """No progress bars or start-up lines from Ray Data on this driver (arxivcls prints its own)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": as set below
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False


def running_dashboard_url() -> str | None:
    """The dashboard of the Ray runtime this process is connected to (None without one)."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node.webui_url if node is not None else None


def train_cleanup_problem() -> str | None:
    """Why Ray Train could not free a finished run's resources in the Ray runtime this process is
    connected to (None: it can). Its PlacementGroupCleaner, on the head node, finds the state API
    as `ray status` does: the cluster `ray start` last recorded, else the only Ray instance on the
    machine. Several instances there and none recorded as theirs: it fails, the CPUs of every
    finished trial stay taken and the study waits forever. start_local_ray tells it the address."""
    import ray
    from ray._private.services import find_gcs_addresses
    from ray._private.utils import read_ray_address

    context = ray.get_runtime_context()
    if "RAY_API_SERVER_ADDRESS" in (context.runtime_env.get("env_vars") or {}):
        return None
    return cleanup_problem(context.gcs_address, read_ray_address(), set(find_gcs_addresses()))


def cleanup_problem(ours: str, recorded: str | None, on_this_machine: set[str]) -> str | None:
    """train_cleanup_problem's rule: `recorded` is the address `ray start` last recorded here."""
    if ours not in on_this_machine:  # its head node is another machine
        return None
    found = recorded or (next(iter(on_this_machine)) if len(on_this_machine) == 1 else None)
    if found == ours:
        return None
    others = ", ".join(sorted(on_this_machine - {ours}))
    return (f"this process's Ray runtime ({ours}) shares the machine with other Ray instances ({others}), so Ray Train "
            f"could not free a finished trial's CPUs and the study would wait forever: let arxivcls.tune start its own "
            f"(no ray.init), or start it with arxivcls.raycluster.start_local_ray(), or with ray.init(dashboard_port=PORT, "
            f"runtime_env={{'env_vars': {{'RAY_API_SERVER_ADDRESS': 'http://127.0.0.1:PORT'}}}})")


def wait_for_resources(need: dict, timeout_s: float = 30.0) -> dict:
    """The cluster's free resources once `need` (e.g. {"CPU": 2.0}) is free, or after timeout_s.

    Ray removes a finished Train run's placement group asynchronously (PlacementGroupCleaner),
    so for a few seconds after a study the CPUs its trials held still read as taken."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        free = ray.available_resources()
        if all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items()) or time.monotonic() >= deadline:
            return free
        time.sleep(0.5)


def dashboard_line(dashboard_url: str | None) -> str:
    """Where the dashboard is and how to open it: with token auth on, the browser asks for the token."""
    if not dashboard_url:
        return "no dashboard"
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if not is_token_auth_enabled():
        return f"dashboard http://{dashboard_url}"
    return (f"dashboard http://{dashboard_url} (it asks for the cluster's token: `ray get-auth-token` prints it "
            f"on this machine; for a remote cluster, run it on the head node)")


def start_local_ray(num_cpus: int | None = None, env_vars: dict | None = None, log_to_driver: bool = True):
    """A local cluster. The dashboard (and token auth, on by default in Ray 2.60) stay on loopback.

    Ray Train's PlacementGroupCleaner (which frees the workers of a trial ASHA stopped) finds the
    state API by auto-detection, and that fails when another Ray instance runs on the machine:
    the freed CPUs never come back and the next trial's worker group times out forever. So the
    dashboard gets a known port and every worker of this job is told where it is."""
    import ray

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env_vars = {**(env_vars or {}), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                # no node of a local cluster is ever preempted: Train's preemption watcher only adds a log line per run
                "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    return ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", dashboard_port=port,
                    include_dashboard=True, logging_level="WARNING", log_to_driver=log_to_driver,
                    runtime_env={"env_vars": env_vars})
