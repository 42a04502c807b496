"""Joining a Ray cluster (`--address` / RAY_ADDRESS), or starting a local one."""
import logging
import os
import socket
import time


def connect_ray(address: str | None = None, log=print) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        info = ray.init(address=address, logging_level="WARNING")
    else:
        info = start_local_ray()
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "Progress bars disabled": as set below
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    log(f"ray: {'joined ' + address if address else 'started a local cluster'}; " + dashboard_line(info.dashboard_url))


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


def start_local_ray(num_cpus: int | None = None, env_vars: dict | None = None):
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
                    include_dashboard=True, logging_level="WARNING", runtime_env={"env_vars": env_vars})
