"""A real two-node Ray cluster on this machine (cluster/local_two_node.sh), token auth on.

The module-scoped fixture `two_node_cluster` starts it once and yields a `TwoNodeCluster`:

    gcs_address        "127.0.0.1:<port>"          for ray.init(address=...) / ray status
    dashboard_address  "http://127.0.0.1:<port>"   for ray job submit / cluster/submit.sh
    env                os.environ + RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH, RAY_ADDRESS,
                       RAY_API_SERVER_ADDRESS: pass it as env= to any client subprocess
    token              the raw token (for an "Authorization: Bearer ..." header)
    workdir            $ARXIVCLS_WORKDIR of the cluster: where cluster/submit.sh jobs run
                       (results/<study>/ lands here), a fresh tmp dir
    state_dir, pids    the script's state dir and the pids it started
    submit(...)        `ray job submit --no-wait` -> submission id
    wait(job_id)       poll until the job is terminal -> (status, logs)

Teardown stops the cluster with the script and asserts that every pid it started (and every
process of this cluster seen since) is gone.

To run a real study on it later:

    job = subprocess.run([REPO / "cluster/submit.sh", two_node_cluster.dashboard_address,
                          "tune/cpu.yaml", "--set", "tune.num_samples=2"],
                         env=two_node_cluster.env, cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.splitlines()[0]
    status, logs = two_node_cluster.wait(job, timeout=1500)
    assert status == "SUCCEEDED", logs
    results = two_node_cluster.workdir / "results" / "cpu"
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "local_two_node.sh"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# The tests read per-worker lines ("worker 0/1 on node X", "epoch 1/N") from the job's logs; Ray's
# log dedup prints only the first of lines that differ in numbers, hiding the other node's worker.
NO_LOG_DEDUP = {"env_vars": {"RAY_DEDUP_LOGS": "0"}}


def _pid_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (it has exited; nothing runs)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except (FileNotFoundError, ProcessLookupError):
        return True


def _cluster_pids(state_dir: Path) -> set[int]:
    """Processes whose argv names the cluster's temp dirs, plus their descendants (like the script)."""
    pattern = re.compile(re.escape(str(state_dir.resolve())).encode() + rb"/(head|node2)(/|\x00|\s|$)")
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        procs[int(entry)] = (ppid, cmd)
    ours = {pid for pid, (_, cmd) in procs.items() if pattern.search(cmd)}
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in ours and pid not in ours}
        ours |= new
        grew = bool(new)
    return {pid for pid in ours if not _pid_gone(pid)}


@dataclass
class TwoNodeCluster:
    gcs_address: str
    dashboard_address: str
    env: dict
    token: str
    workdir: Path
    state_dir: Path
    pids: set = field(default_factory=set)

    def auth_header(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def api(self, path: str, timeout: float = 30) -> dict:
        req = urllib.request.Request(self.dashboard_address + path, headers=self.auth_header())
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def submit(self, entrypoint: list[str], working_dir: Path, submission_id: str, runtime_env: dict | None = None) -> str:
        """`ray job submit --no-wait` with the client env (token from RAY_AUTH_TOKEN_PATH)."""
        cmd = ["ray", "job", "submit", "--address", self.dashboard_address, "--submission-id", submission_id,
               "--working-dir", str(working_dir), "--no-wait"]
        if runtime_env:
            cmd += ["--runtime-env-json", json.dumps(runtime_env)]
        proc = subprocess.run(cmd + ["--", *entrypoint], env=self.env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return submission_id

    def wait(self, job_id: str, timeout: float = 240) -> tuple[str, str]:
        deadline = time.time() + timeout
        status = None
        while time.time() < deadline:
            status = self.api(f"/api/jobs/{job_id}")["status"]
            if status in TERMINAL:
                break
            time.sleep(2)
        logs = self.api(f"/api/jobs/{job_id}/logs").get("logs", "")
        return status, logs

    def nodes(self) -> list[dict]:
        """ray.nodes() from a separate driver process (keeps this pytest process Ray-free)."""
        code = "import json, ray; ray.init(); print('NODES=' + json.dumps(ray.nodes())); ray.shutdown()"
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("NODES=")]
        return json.loads(line[len("NODES="):])


def _base_env(state_dir: Path, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ARXIVCLS_"))}
    bindir = str(Path(sys.executable).parent)  # the venv: ray, python, arxivcls
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.update(ARXIVCLS_TWO_NODE_DIR=str(state_dir), ARXIVCLS_WORKDIR=str(workdir),
               RAY_BIN=str(Path(bindir) / "ray"), ARXIVCLS_START_TIMEOUT="240",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _read_env_file(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(?:export\s+)?([A-Z_][A-Z0-9_]*)=['\"]?(.*?)['\"]?$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


@pytest.fixture(scope="module")
def two_node_cluster():
    import importlib.util

    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("ray CLI not installed next to this python")
    if importlib.util.find_spec("aiohttp") is None:
        pytest.skip("the dashboard / job API needs ray[default]: pip install -e '.[cluster]'")

    # Short path: Ray's unix sockets live under it (107-byte limit), so not pytest's tmp_path.
    state_dir = Path(tempfile.mkdtemp(prefix="ax2n-", dir="/tmp")).resolve()
    workdir = state_dir / "work"
    workdir.mkdir()
    env = _base_env(state_dir, workdir)
    started: set[int] = set()
    try:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=420)
        if (state_dir / "pids").exists():
            started |= {int(p) for p in (state_dir / "pids").read_text().split()}
        assert proc.returncode == 0, f"start failed:\n{proc.stdout}\n{proc.stderr}"

        client = _read_env_file(state_dir / "env.sh")
        ports = _read_env_file(state_dir / "cluster.env")
        assert client["RAY_AUTH_MODE"] == "token"
        cluster = TwoNodeCluster(
            gcs_address=ports["GCS_ADDRESS"],
            dashboard_address=ports["DASHBOARD_URL"],
            env={**env, **client},
            token=Path(client["RAY_AUTH_TOKEN_PATH"]).read_text().strip(),
            workdir=workdir,
            state_dir=state_dir,
            pids=set(started),
        )
        assert started, "the script recorded no pids"
        yield cluster
    finally:
        seen = started | _cluster_pids(state_dir)
        stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=180)
        deadline = time.time() + 30
        while time.time() < deadline and not all(_pid_gone(p) for p in seen):
            time.sleep(0.5)
        left = sorted(p for p in seen | _cluster_pids(state_dir) if not _pid_gone(p))
        for pid in left:  # last resort, so a failing test never leaks a cluster; still fails below
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(state_dir, ignore_errors=True)
        assert stop.returncode == 0, f"stop failed:\n{stop.stdout}\n{stop.stderr}"
        assert not left, f"processes still running after stop: {left}"


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state = cols[1], cols[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A = LISTEN
                continue
            if width == 8:
                found.add(".".join(str(b) for b in bytes.fromhex(addr_hex)[::-1]))
            else:
                found.add("ipv6:" + addr_hex)
    return found


JOB = textwrap.dedent('''
    """Tiny job: one task pinned to each node, each writes a marker into a shared dir."""
    import json, os, socket, sys
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    shared = sys.argv[1]
    ray.init()  # RAY_ADDRESS is set by the job supervisor
    nodes = [n for n in ray.nodes() if n["Alive"]]
    head = next(n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"])

    @ray.remote(num_cpus=1)
    def mark(tag):
        node = ray.get_runtime_context().get_node_id()
        path = os.path.join(shared, f"marker-{tag}.json")
        with open(path, "w") as f:
            json.dump({"tag": tag, "node_id": node, "pid": os.getpid()}, f)
        return node

    on_head = mark.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote("head")
    on_node2 = mark.options(resources={"node2": 1}).remote("node2")
    result = {"head": ray.get(on_head), "node2": ray.get(on_node2), "driver_node": ray.get_runtime_context().get_node_id(),
              "alive_nodes": len(nodes)}
    with open(os.path.join(shared, "result.json"), "w") as f:
        json.dump(result, f)
    print("RESULT", json.dumps(result))
''')


def test_two_alive_nodes_with_node2_resource(two_node_cluster):
    nodes = [n for n in two_node_cluster.nodes() if n["Alive"]]
    assert len(nodes) == 2
    assert sum("node2" in n["Resources"] for n in nodes) == 1
    assert sum("node:__internal_head__" in n["Resources"] for n in nodes) == 1
    assert all(n["Resources"].get("CPU") == 1 for n in nodes)


def test_dashboard_loopback_only_and_token_required(two_node_cluster):
    port = int(two_node_cluster.dashboard_address.rsplit(":", 1)[1])
    assert _listening_addresses(port) == {"127.0.0.1"}
    url = two_node_cluster.dashboard_address + "/api/jobs/"
    with pytest.raises(urllib.error.HTTPError) as no_token:
        urllib.request.urlopen(url, timeout=30)
    assert no_token.value.code == 401
    bad = urllib.request.Request(url, headers={"Authorization": "Bearer " + "0" * 64})
    with pytest.raises(urllib.error.HTTPError) as wrong_token:
        urllib.request.urlopen(bad, timeout=30)
    assert wrong_token.value.code == 403
    assert isinstance(two_node_cluster.api("/api/jobs/"), list)
    # the CLI without the auth env is refused too
    no_auth_env = {k: v for k, v in two_node_cluster.env.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run(["ray", "job", "list", "--address", two_node_cluster.dashboard_address],
                          env=no_auth_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Authentication" in (proc.stdout + proc.stderr)


def test_job_runs_tasks_on_both_nodes(two_node_cluster, tmp_path):
    shared = two_node_cluster.state_dir / "shared"  # both "machines" see this path
    shared.mkdir()
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    (jobdir / "job.py").write_text(JOB)

    job_id = two_node_cluster.submit(["python", "job.py", str(shared)], jobdir, submission_id="two-node-smoke")
    status, logs = two_node_cluster.wait(job_id, timeout=240)
    assert status == "SUCCEEDED", logs

    node_ids = {n["NodeID"] for n in two_node_cluster.nodes() if n["Alive"]}
    result = json.loads((shared / "result.json").read_text())
    assert result["alive_nodes"] == 2
    assert {result["head"], result["node2"]} == node_ids  # one task on each node
    assert result["driver_node"] == result["head"]  # the entrypoint runs on the head
    for tag in ("head", "node2"):
        marker = json.loads((shared / f"marker-{tag}.json").read_text())
        assert marker["node_id"] == result[tag]
    assert "RESULT" in logs


def test_submit_script_runs_arxivcls_in_workdir(two_node_cluster):
    """cluster/submit.sh end to end: upload, cd $ARXIVCLS_WORKDIR, `arxivcls tune CONFIG`.

    A bad --set makes `arxivcls tune` stop at once with `error: ...` (the CLI contract), so this
    checks the wiring without training anything.
    """
    config = REPO / "tune" / "cpu.yaml"
    if not config.exists():
        pytest.skip("tune/cpu.yaml not present")
    env = {**two_node_cluster.env, "ARXIVCLS_SUBMISSION_ID": "submit-sh-smoke"}
    proc = subprocess.run([str(REPO / "cluster" / "submit.sh"), two_node_cluster.dashboard_address, "tune/cpu.yaml",
                           "--set", "no_such_section.key=1"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == "submit-sh-smoke"
    assert any("ray job logs" in ln and "--follow" in ln for ln in out)
    assert any("ray job stop" in ln for ln in out)

    status, logs = two_node_cluster.wait("submit-sh-smoke", timeout=240)
    assert status == "FAILED", logs
    assert re.search(r"^error: ", logs, re.M), logs
    assert f"submit.sh: running in {two_node_cluster.workdir}" in logs  # the cluster's ARXIVCLS_WORKDIR
    info = two_node_cluster.api("/api/jobs/submit-sh-smoke")
    assert "arxivcls tune" in info["entrypoint"]
    excludes = info["runtime_env"].get("excludes", [])
    assert ".venv" in excludes and "results/*/models" in excludes


def test_tiny_study_submitted_as_a_job_uses_both_nodes(two_node_cluster, tmp_path, papers_file, tiny_bert):
    """`ray job submit -- arxivcls tune ...` on the two-node cluster: 2 concurrent 1-CPU trials, one per node."""
    from conftest import tiny_study_yaml

    shared = two_node_cluster.state_dir / "study"  # storage both nodes see (a shared filesystem stand-in)
    shared.mkdir()
    config = tiny_study_yaml(shared, papers_file, tiny_bert, train={"cpus_per_worker": 1, "epochs": 2},
                             tune={"num_samples": 2, "study": "twonode"}, eval={"baseline": False})
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    job_id = two_node_cluster.submit(["arxivcls", "tune", str(config)], jobdir, submission_id="two-node-study",
                                     runtime_env=NO_LOG_DEDUP)
    status, logs = two_node_cluster.wait(job_id, timeout=600)
    assert status == "SUCCEEDED", logs[-4000:]

    node_ids = {n["NodeID"] for n in two_node_cluster.nodes() if n["Alive"]}
    worker_nodes = set(re.findall(r"worker 0/1 on node \S+ id ([0-9a-f]+)", logs))
    assert worker_nodes == node_ids  # the two trials' workers ran one on each node
    experiment = shared / "runs" / "twonode"
    assert any(experiment.glob("experiment_state-*.json"))
    assert len(list(experiment.glob("train-*/checkpoint_2*"))) >= 2  # checkpoints in the shared storage
    assert (shared / "results" / "twonode" / "comparison.csv").is_file()
    study = json.loads((shared / "results" / "twonode" / "study.json").read_text())
    assert study["concurrency"] == 2 and study["trials_by_status"]
    import reliability

    reliability.record("cluster", "tiny study submitted with `ray job submit` to a local two-node cluster",
                       "2 trials ran concurrently, one Train worker on each node; checkpoints in the shared storage; job SUCCEEDED")


def _node_pids(state_dir: Path, node: str) -> list[int]:
    """Processes of one node of this cluster: their command lines name the node's own temp dir."""
    marker = f"{state_dir}/{node}/".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def test_worker_node_lost_mid_study_and_the_study_completes(two_node_cluster, tmp_path, papers_file, tiny_bert):
    """Runs last in this module: it stops node2 for good while one of the trials trains there."""
    from conftest import tiny_study_yaml

    shared = two_node_cluster.state_dir / "study-nodeloss"
    shared.mkdir()
    config = tiny_study_yaml(shared, papers_file, tiny_bert,
                             train={"cpus_per_worker": 1, "epochs": 8, "max_failures": 3, "patience": 10},
                             tune={"num_samples": 2, "study": "nodeloss", "max_failures": 2,
                                   "search_space": {"learning_rate": {"type": "loguniform", "low": 5e-4, "high": 2e-3}}},
                             eval={"baseline": False, "logit_adjust": False})
    jobdir = tmp_path / "job"
    jobdir.mkdir()
    node2 = next(n["NodeID"] for n in two_node_cluster.nodes() if n["Alive"] and "node2" in n["Resources"])
    job_id = two_node_cluster.submit(["arxivcls", "tune", str(config)], jobdir, submission_id="two-node-loss",
                                     runtime_env=NO_LOG_DEDUP)
    deadline = time.time() + 600
    while time.time() < deadline:  # wait until the worker on node2 has finished an epoch
        logs = two_node_cluster.api(f"/api/jobs/{job_id}/logs").get("logs", "")
        match = re.search(rf"RayTrainWorker pid=(\d+)[^)]*\)\S* worker 0/1 on node \S+ id {node2}", logs)
        if match and re.search(rf"RayTrainWorker pid={match.group(1)}[^)]*\)\S* epoch 1/8", logs):
            break
        if two_node_cluster.api(f"/api/jobs/{job_id}")["status"] in TERMINAL:
            pytest.fail("the study ended before a trial was seen training on node2:\n" + logs[-3000:])
        time.sleep(0.5)
    else:
        pytest.fail("no trial trained on node2 in time:\n" + logs[-3000:])
    for pid in _node_pids(two_node_cluster.state_dir, "node2"):
        try:
            os.kill(pid, signal.SIGKILL)  # node2 is gone: raylet, object store, its workers
        except ProcessLookupError:
            pass

    status, logs = two_node_cluster.wait(job_id, timeout=900)
    assert status == "SUCCEEDED", logs[-4000:]
    import pandas as pd

    trials = pd.read_csv(shared / "results" / "nodeloss" / "trials.csv")
    assert len(trials) == 2 and trials.best_metric.notna().all()
    assert set(trials.status) <= {"completed", "stopped_by_asha", "stopped_by_patience"}
    assert (trials.epochs_run == 8).any()  # patience off: only ASHA stops trials, never the better of the two at a rung
    import reliability

    reliability.record("fault", "worker node of a two-node cluster killed mid-study (raylet + workers, SIGKILL)",
                       "the trial on it was restarted on the surviving node per FailureConfig; study SUCCEEDED, trials: "
                       + ", ".join(f"{s} {n}" for s, n in trials.status.value_counts().items()))
