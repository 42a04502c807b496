"""The cluster launcher configs, checked offline against Ray's own schema and our rules.

No cloud access: `prepare_config` + `validate_config` are the first steps of `ray up` (defaults
merged, setup commands merged, docker checked, JSON schema validated) before any provider call.
Also checks cluster/submit.sh's entrypoint quoting without a cluster (dry-run mode).
"""
import copy
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
CONFIGS = ["config.yaml", "onprem.yaml"]
IMAGE = "rayproject/ray:2.60.0-py311-gpu"
DASHBOARD_PORT = 8265


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does before it touches a cloud: raw schema check, defaults, full validation."""
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def start_commands(config: dict) -> list[str]:
    return list(config.get("head_start_ray_commands", [])) + list(config.get("worker_start_ray_commands", []))


def head_start(config: dict) -> str:
    (cmd,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    return cmd


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_against_ray_schema(name):
    prepared = ray_validate(load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.__setitem__("idle_timeout_minute", c.pop("idle_timeout_minutes")), id="top-level-typo"),
        pytest.param(lambda c: c["docker"].__setitem__("imgae", c["docker"].pop("image")), id="docker-typo"),
        pytest.param(lambda c: c["auth"].__setitem__("ssh_usr", c["auth"].pop("ssh_user")), id="auth-typo"),
        pytest.param(lambda c: c.__setitem__("idle_timeout_minutes", "ten"), id="wrong-type"),
    ],
)
def test_mutated_config_fails_validation(name, mutate):
    config = load(name)
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


def test_misspelled_node_type_key_fails_validation():
    config = load("config.yaml")
    gpu = config["available_node_types"]["gpu_worker"]
    gpu["min_worker"] = gpu.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(config)


@pytest.mark.parametrize("name", CONFIGS)
def test_image_is_pinned_ray_gpu_image(name):
    docker = load(name)["docker"]
    assert docker["image"] == IMAGE
    for key in ("head_image", "worker_image"):
        assert docker.get(key, IMAGE) == IMAGE
    for node_type in load(name).get("available_node_types", {}).values():
        assert node_type.get("docker", {}).get("worker_image", IMAGE) == IMAGE


def test_gpu_workers_scale_from_zero():
    config = load("config.yaml")
    head = config["head_node_type"]
    workers = {k: v for k, v in config["available_node_types"].items() if k != head}
    assert workers, "no worker node type"
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert 1 <= node_type["max_workers"] <= config["max_workers"], name
        assert re.match(r"^(g\d|p\d)", node_type["node_config"]["InstanceType"]), f"{name} is not a GPU instance"
    # and the head is not a GPU box
    assert not re.match(r"^(g\d|p\d)", config["available_node_types"][head]["node_config"]["InstanceType"])


def test_head_takes_no_training():
    config = load("config.yaml")
    assert config["available_node_types"][config["head_node_type"]]["resources"].get("CPU") == 0
    onprem = head_start(load("onprem.yaml"))
    assert "--num-cpus=0" in onprem and "--num-gpus=0" in onprem


@pytest.mark.parametrize("name", CONFIGS)
def test_idle_timeout_set(name):
    config = load(name)
    assert isinstance(config["idle_timeout_minutes"], (int, float)) and config["idle_timeout_minutes"] > 0


def _rules_cover_dashboard(rules: list) -> list:
    bad = []
    for rule in rules:
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        all_ports = rule.get("IpProtocol") == "-1" or lo == -1
        if all_ports or lo <= DASHBOARD_PORT <= hi:
            if rule.get("IpRanges") or rule.get("Ipv6Ranges") or rule.get("PrefixListIds"):
                bad.append(rule)
    return bad


@pytest.mark.parametrize("name", CONFIGS)
def test_dashboard_not_exposed(name):
    config = load(name)
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert _rules_cover_dashboard(rules) == [], "an ingress rule opens the dashboard port to addresses"
    for node_type in config.get("available_node_types", {}).values():
        # a pre-made security group could open anything; none is referenced
        assert "SecurityGroupIds" not in node_type["node_config"]
    head = head_start(config)
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in "\n".join(start_commands(config))
    # no published ports on the container either
    run_options = " ".join(config["docker"].get("run_options", []) + config["docker"].get("head_run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)(\s|=)", run_options)


@pytest.mark.parametrize("name", CONFIGS)
def test_token_auth_stays_on(name):
    config = load(name)
    text = (CLUSTER / name).read_text()
    assert not re.search(r"RAY_AUTH_MODE\s*=\s*disabled", text)
    for cmd in start_commands(config):
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    # every node gets the token at Ray's default path (~/.ray/auth_token) from the submitter's ~/.ray
    assert config["file_mounts"].get("/home/ray/.ray") == "~/.ray"


@pytest.mark.parametrize("name", CONFIGS)
def test_project_is_mounted_and_installed(name):
    config = load(name)
    assert config["file_mounts"]["/home/ray/arxivcls"] == "."
    setup = "\n".join(config["setup_commands"])
    assert re.search(r"pip install .*-e .*/home/ray/arxivcls", setup)
    assert "ARXIVCLS_WORKDIR=/home/ray/arxivcls" in setup
    for big in (".venv", "runs", "results/*/models"):
        assert big in config["rsync_exclude"]


def test_netns_config_validates_and_keeps_to_its_hosts():
    """cluster/netns.yaml (no docker) onto cluster/netns_hosts.sh's hosts; brought up by test_netns_cluster."""
    config = load("netns.yaml")
    prepared = ray_validate(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert "docker" not in config
    provider = config["provider"]
    script = (CLUSTER / "netns_hosts.sh").read_text()
    for ip in [provider["head_ip"], *provider["worker_ips"]]:
        assert ip.startswith("198.18.0.") and ip in script
    assert config["auth"]["ssh_private_key"].startswith("/tmp/arxivcls-netns/")
    text = (CLUSTER / "netns.yaml").read_text() + script
    assert not re.search(r"\b(10|192\.168|172\.(1[6-9]|2\d|3[01]))\.\d+\.\d+\.\d+", text), "a private address"
    head = head_start(config)
    assert f"--node-ip-address={provider['head_ip']}" in head and "--dashboard-host=127.0.0.1" in head
    assert "--num-cpus=0" in head
    (worker,) = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert "--node-ip-address=" in worker and "--temp-dir=" in worker
    for cmd in start_commands(config):
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, cmd
    assert config["file_mounts"] == {"~/.ray/auth_token": "/tmp/arxivcls-netns/auth_token"}
    assert "pip install" not in "\n".join(config["setup_commands"])  # the environment is already there


def test_s3_bucket_named_in_exactly_one_place():
    text = (CLUSTER / "config.yaml").read_text()
    uris = re.findall(r"s3://([A-Za-z0-9.\-_]+)", text)
    assert len(uris) == 1, f"s3:// appears {len(uris)} times in cluster/config.yaml"
    bucket = uris[0]
    assert text.count(bucket) == 1
    (line,) = [ln for ln in text.splitlines() if bucket in ln]
    assert "export ARXIVCLS_STORAGE=s3://" in line
    # the scripts read $ARXIVCLS_STORAGE; none of them repeats the bucket
    for other in ("onprem.yaml", "submit.sh", "local_two_node.sh", "README.md"):
        path = CLUSTER / other
        if path.exists():
            assert bucket not in path.read_text(), f"bucket also named in cluster/{other}"


def test_onprem_has_placeholders():
    provider = load("onprem.yaml")["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"] and provider["worker_ips"]
    auth = load("onprem.yaml")["auth"]
    assert auth["ssh_user"] and auth["ssh_private_key"]


@pytest.mark.parametrize("script", ["submit.sh", "local_two_node.sh", "netns_hosts.sh"])
def test_scripts_are_executable_bash(script):
    path = CLUSTER / script
    assert path.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(path)], check=True)


def _fake_arxivcls(tmp_path: Path) -> dict:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "arxivcls"
    fake.write_text('#!/bin/sh\necho "cwd=$(pwd)"\nfor a in "$@"; do echo "arg=$a"; done\n')
    fake.chmod(0o755)
    # submit.sh needs `ray` on PATH only to exist; dry-run submits nothing
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ARXIVCLS_"))}
    env["PATH"] = os.pathsep.join([str(bindir), str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_submit_entrypoint_quoting_and_head_env(tmp_path):
    env = _fake_arxivcls(tmp_path)
    if subprocess.run(["bash", "-c", "command -v ray"], env=env, capture_output=True).returncode:
        pytest.skip("ray CLI not on PATH")
    weird = "/data dir/it's $HOME.parquet"
    config_rel = "pyproject.toml"  # any file inside the repo; dry-run does not read it
    out = subprocess.run(
        [str(CLUSTER / "submit.sh"), "127.0.0.1:8265", config_rel, "--set", "train.epochs=2", "--data", weird],
        env={**env, "ARXIVCLS_SUBMIT_DRY_RUN": "1"}, cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()

    # run it the way the job supervisor does (sh -c, in the job's working_dir copy), with and
    # without the cluster-wide variables that cluster/config.yaml puts in the head's environment
    jobdir = tmp_path / "job_working_dir"
    jobdir.mkdir()
    workdir = tmp_path / "work" / "dir"
    on_cluster = subprocess.run(
        ["sh", "-c", out], cwd=jobdir, capture_output=True, text=True, check=True,
        env={**env, "ARXIVCLS_WORKDIR": str(workdir), "ARXIVCLS_STORAGE": "s3://bucket/prefix"},
    ).stdout.splitlines()
    assert on_cluster[0] == f"cwd={workdir}"
    assert on_cluster[1:] == [
        "arg=tune", f"arg={jobdir}/{config_rel}",
        "arg=--set", "arg=train.storage_path=s3://bucket/prefix",
        "arg=--set", "arg=train.epochs=2", "arg=--data", f"arg={weird}",
    ]
    plain = subprocess.run(["sh", "-c", out], cwd=jobdir, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert plain == [f"cwd={jobdir}", "arg=tune", f"arg={jobdir}/{config_rel}",
                     "arg=--set", "arg=train.epochs=2", "arg=--data", f"arg={weird}"]


def test_submit_rejects_config_outside_repo(tmp_path):
    env = _fake_arxivcls(tmp_path)
    outside = tmp_path / "study.yaml"
    outside.write_text("tune: {}\n")
    proc = subprocess.run([str(CLUSTER / "submit.sh"), "http://127.0.0.1:8265", str(outside)],
                          env={**env, "ARXIVCLS_SUBMIT_DRY_RUN": "1"}, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    proc = subprocess.run([str(CLUSTER / "submit.sh"), "http://127.0.0.1:8265"], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_submit_excludes_big_dirs():
    text = (CLUSTER / "submit.sh").read_text()
    (runtime_env,) = re.findall(r"RUNTIME_ENV='(\{.*\})'", text)
    excludes = json.loads(runtime_env)["excludes"]
    for big in (".venv", "runs", "results/*/models"):
        assert big in excludes
    assert "--no-wait" in text and "--working-dir ." in text
