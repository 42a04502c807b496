"""`arxivcls serve`: request checks and the loaded model without Ray (fast); then the command
itself in a subprocess (its own local Ray, 2 replicas of the tiny BERT), with real HTTP requests
to 127.0.0.1: predictions equal `arxivcls predict`'s, bad requests get their 4xx, a replica
SIGKILLed mid-traffic is replaced while clients that retry lose nothing."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import reliability
from arxivcls.cli import main
from arxivcls.serve import BadRequest, ServeOptions, paper_text, parse_request

REPO = Path(__file__).resolve().parents[1]
LIMITS = {"max_papers": 8, "max_chars": 5000}
BIG = "x" * 5001


def _bad_requests() -> list[tuple[str, bytes, int]]:
    ok = {"title": "Qubits", "abstract": "Error correction."}
    cases = [("not JSON", b"title=Qubits", 400), ("not UTF-8", b"\xff\xfe{", 400),
             ("JSON nested 100,000 deep", b"[" * 100_000, 400), ("a JSON list, not an object", b"[]", 400),
             ("no 'papers'", {"top_k": 3}, 400), ("'papers' not a list", {"papers": ok}, 400),
             ("empty 'papers'", {"papers": []}, 400), ("more papers than --max-papers", {"papers": [ok] * 9}, 413),
             ("a paper that is a string", {"papers": ["Qubits"]}, 400), ("missing title", {"papers": [{"abstract": "x"}]}, 400),
             ("blank title", {"papers": [{"title": "  "}]}, 400), ("title a number", {"papers": [{"title": 7}]}, 400),
             ("abstract a list", {"papers": [{"title": "a", "abstract": ["b"]}]}, 400),
             ("title + abstract over --max-chars", {"papers": [{"title": "a", "abstract": BIG}]}, 413),
             ("top_k a string", {"papers": [ok], "top_k": "3"}, 400), ("top_k true", {"papers": [ok], "top_k": True}, 400),
             ("top_k 0", {"papers": [ok], "top_k": 0}, 400), ("unknown field", {"papers": [ok], "topk": 2}, 400)]
    return [(name, body if isinstance(body, bytes) else json.dumps(body).encode(), status) for name, body, status in cases]


# ---------------------------------------------------------------- without Ray

@pytest.mark.parametrize("name,body,status", _bad_requests(), ids=[c[0] for c in _bad_requests()])
def test_bad_request_is_refused_before_the_model(name, body, status):
    with pytest.raises(BadRequest) as refused:
        parse_request(body, ServeOptions("unused", **LIMITS))
    assert refused.value.status == status and "\n" not in str(refused.value)


def test_request_text_is_predicts_text():
    texts, k = parse_request(json.dumps({"papers": [{"title": " A\ttitle ", "abstract": "the\n abstract "},
                                                    {"title": "only a title"}]}).encode(), ServeOptions("unused"))
    assert texts == ["A title the abstract", "only a title"] and k == 3
    assert paper_text("t", "") == "t"


def test_serve_refuses_bad_options_before_starting_ray(tiny_bert, tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert main(["serve", "--model", str(tmp_path)]) == 2  # a directory without a model
    assert main(["serve", "--model", str(tiny_bert), "--replicas", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "no such directory" in errors[0] and "--replicas must be >= 1" in errors[2]


# ---------------------------------------------------------------- the command, over HTTP

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(root: int) -> dict[int, str]:
    """pid -> argv of every process under root (the CLI's Ray: GCS, raylet, workers, replicas)."""
    procs = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        procs[int(entry)] = (ppid, cmd)
    found, grew = {root}, True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return {pid: procs[pid][1] for pid in found if pid in procs}


def _replicas(server) -> set[int]:
    return {pid for pid, cmd in _descendants(server.pid).items() if "ServeReplica:arxivcls" in cmd}


def _request(url: str, body: bytes | None = None, method: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"body": text[:200].decode(errors="replace")}


def _predict(url: str, papers: list[dict], top_k: int = 2) -> list:
    status, answer = _request(f"{url}/predict", json.dumps({"papers": papers, "top_k": top_k}).encode())
    assert status == 200, answer
    return answer["predictions"]


def _same(got: list, expected: list) -> bool:
    """The same categories in the same order, probabilities equal to float rounding."""
    return [[r["category"] for r in ranks] for ranks in got] == [[r["category"] for r in ranks] for ranks in expected] \
        and np.allclose([r["probability"] for ranks in got for r in ranks],
                        [r["probability"] for ranks in expected for r in ranks], atol=1e-6)


def _listening_hosts(port: int) -> set[str]:
    hosts = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if int(local_port, 16) == port and state == "0A":
            hosts.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return hosts


@pytest.fixture(scope="module")
def server(tiny_bert, tmp_path_factory):
    """`arxivcls serve` in a subprocess: its own local Ray, 2 replicas, limits LIMITS. Started with
    SIGINT ignored, as a script's background job is: SIGINT must still stop it."""
    port, log = _free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = ["bash", "-c", 'trap "" INT; exec "$0" "$@"',
               sys.executable, "-m", "arxivcls.cli", "serve", "--model", str(tiny_bert), "--port", str(port),
               "--replicas", "2", "--cpus-per-replica", "0.5", "--max-papers", str(LIMITS["max_papers"]),
               "--max-chars", str(LIMITS["max_chars"])]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    process.url, process.port, process.log = f"http://127.0.0.1:{port}", port, log
    try:
        deadline = time.time() + 420
        while "serving " not in log.read_text():
            assert process.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield process
    finally:
        everything = _descendants(process.pid)
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    assert code == 0, log.read_text()[-3000:]
    deadline = time.time() + 60
    while any(Path(f"/proc/{pid}").exists() and "ServeReplica" in cmd for pid, cmd in everything.items()) and time.time() < deadline:
        time.sleep(1)
    assert not [pid for pid, cmd in everything.items() if Path(f"/proc/{pid}").exists() and "ServeReplica" in cmd]


@pytest.mark.slow
def test_served_predictions_equal_predict(server, tiny_bert, real_papers, tmp_path):
    sample = real_papers.head(6)
    papers = [{"title": t, "abstract": a} for t, a in zip(sample.title, sample.summary)]
    sample[["id", "title", "summary"]].to_parquet(tmp_path / "papers.parquet")
    assert main(["predict", "--model", str(tiny_bert), "--input", str(tmp_path / "papers.parquet"),
                 "--output", str(tmp_path / "out.jsonl"), "--top-k", "2"]) == 0
    expected = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    together = _predict(server.url, papers)
    with ThreadPoolExecutor(6) as pool:  # concurrent single-paper requests: batched together
        alone = [answer[0] for answer in pool.map(lambda p: _predict(server.url, [p]), papers)]
    for got in (together, alone):
        for row, ranks in zip(expected, got):
            assert [r["category"] for r in ranks] == [row["top1"], row["top2"]]
            assert np.allclose([r["probability"] for r in ranks], [row["top1_prob"], row["top2_prob"]], atol=1e-5)
    status, info = _request(server.url + "/")
    assert status == 200 and [label["code"] for label in info["labels"]] == ["LABEL_0", "LABEL_1"]
    assert len(info["version"]) == 16 and _request(server.url + "/health") == (200, {"status": "ok"})
    assert _listening_hosts(server.port) == {"127.0.0.1"}  # loopback by default


@pytest.mark.slow
def test_bad_requests_get_4xx_and_the_server_keeps_answering(server, real_papers):
    before = _replicas(server)
    good = [{"title": real_papers.title[0], "abstract": real_papers.summary[0]}]
    expected = _predict(server.url, good)
    cases = [*_bad_requests(), ("body over the byte limit", b" " * (ServeOptions("", **LIMITS).max_body_bytes + 1), 413)]
    for name, body, status in cases:
        got, answer = _request(f"{server.url}/predict", body)
        assert (got, set(answer)) == (status, {"error"}), (name, got, answer)
        assert _same(_predict(server.url, good), expected), name
        reliability.record("bad input", f"serve: {name}", f"HTTP {got}, `{json.dumps(answer)[:100]}`; next request answered")
    assert _request(f"{server.url}/predict")[0] == 405 and _request(f"{server.url}/nowhere")[0] == 404
    assert _replicas(server) == before  # no replica crashed


def _retrying(url: str, papers: list[dict], deadline: float, tries: list) -> list:
    """A client that retries on connection errors and 5xx until the deadline."""
    while True:
        try:
            status, answer = _request(f"{url}/predict", json.dumps({"papers": papers, "top_k": 2}).encode(), timeout=30)
            if status == 200:
                return answer["predictions"]
            assert status >= 500, answer  # a 4xx would be a bug: the requests are good
            tries.append(f"HTTP {status}")
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            tries.append(type(e).__name__)
        assert time.time() < deadline, "no answer before the deadline"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_replica_killed_mid_traffic_is_replaced_and_nothing_is_lost(server, real_papers):
    papers = [{"title": t, "abstract": a} for t, a in zip(real_papers.title[:24], real_papers.summary[:24])]
    expected = [_predict(server.url, [p]) for p in papers[:4]]
    before = _replicas(server)
    assert len(before) == 2
    victim, done, retries = sorted(before)[0], threading.Event(), []
    deadline = time.time() + 400

    def send(i):
        answer = _retrying(server.url, [papers[i]], deadline, retries)
        if i == 3:
            done.set()
        return answer

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, i) for i in range(len(papers))]
        done.wait(timeout=300)
        os.kill(victim, signal.SIGKILL)
        answers = [f.result() for f in futures]
    assert all(len(a) == 1 and len(a[0]) == 2 for a in answers)  # every request answered
    assert all(_same(got, want) for got, want in zip(answers, expected))
    while len(_replicas(server) - {victim}) < 2:  # Serve starts a replacement
        assert time.time() < deadline, f"replicas: {_replicas(server)}"
        time.sleep(1)
    assert _same(_predict(server.url, papers[:2]), [expected[0][0], expected[1][0]])
    reliability.record("fault", "`arxivcls serve`: one of 2 replicas SIGKILLed mid-traffic (24 requests, 4 clients)",
                       f"{len(retries)} failed tries ({', '.join(sorted(set(retries))) or 'none'}) retried by the client, "
                       "all 24 answered; Serve started a new replica and the endpoint kept answering")
