"""`arxivcls serve`: a saved model behind Ray Serve, answering `POST /predict` over HTTP.

Each replica loads the model once. Papers of concurrent requests share forward passes
(`@serve.batch`); the text, max_length and precision are those of `arxivcls predict`, so the
answers equal its predictions. Requests are checked before they reach the model: a bad one gets
a 4xx and a one-line JSON error.
"""
import asyncio
import dataclasses
import hashlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from ray import serve

from arxivcls.classifier import paper_text
from arxivcls.errors import UserError

APP = "arxivcls"
ROUTES = {"/": "GET", "/health": "GET", "/predict": "POST"}
MAX_QUEUED = 256  # requests waiting for a replica, beyond which the endpoint answers 503


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    model_dir: str
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    max_batch_size: int = 16  # 1 = no batching: one forward pass per paper
    batch_wait_ms: float = 5.0
    max_papers: int = 64  # per request
    max_chars: int = 20_000  # title + abstract of one paper

    def check(self) -> None:
        if not Path(self.model_dir).is_dir():
            raise UserError(f"--model {self.model_dir}: no such directory")
        for name in ("replicas", "max_batch_size", "max_papers", "max_chars"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.cpus_per_replica <= 0 or self.gpus_per_replica < 0 or self.batch_wait_ms < 0:
            raise UserError("--cpus-per-replica must be > 0, --gpus-per-replica and --batch-wait-ms >= 0")

    @property
    def max_body_bytes(self) -> int:
        return self.max_papers * (6 * self.max_chars + 256) + 4096  # JSON may escape a character as \uXXXX


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- requests

def parse_request(body: bytes, options: ServeOptions) -> tuple[list[str], int]:
    """The papers' texts and top_k of a `POST /predict` body, or BadRequest."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(400, "the body is not valid JSON")
    if not isinstance(payload, dict):
        raise BadRequest(400, 'the body must be a JSON object: {"papers": [{"title": ..., "abstract": ...}], "top_k": 3}')
    unknown = sorted(set(payload) - {"papers", "top_k"})
    if unknown:
        raise BadRequest(400, f"unknown field '{unknown[0][:40]}': expected 'papers' and optionally 'top_k'")
    top_k = payload.get("top_k", 3)
    if type(top_k) is not int or top_k < 1:
        raise BadRequest(400, "'top_k' must be an integer >= 1")
    papers = payload.get("papers")
    if not isinstance(papers, list):
        raise BadRequest(400, "'papers' must be a list of {\"title\": ..., \"abstract\": ...} objects")
    if not papers:
        raise BadRequest(400, "'papers' is empty")
    if len(papers) > options.max_papers:
        raise BadRequest(413, f"{len(papers)} papers in one request; at most {options.max_papers}")
    return [_paper(i, paper, options.max_chars) for i, paper in enumerate(papers)], top_k


def _paper(i: int, paper, max_chars: int) -> str:
    if not isinstance(paper, dict):
        raise BadRequest(400, f"papers[{i}] must be an object with a 'title' and an optional 'abstract'")
    title, abstract = paper.get("title"), paper.get("abstract", "")
    if not isinstance(title, str) or not title.strip():
        raise BadRequest(400, f"papers[{i}] needs a non-empty string 'title'")
    if not isinstance(abstract, str):
        raise BadRequest(400, f"papers[{i}]: 'abstract' must be a string")
    if len(title) + len(abstract) > max_chars:
        raise BadRequest(413, f"papers[{i}]: title + abstract is {len(title) + len(abstract)} characters; at most {max_chars}")
    return paper_text(title, abstract)


async def read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {declared} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the body is over {limit} bytes")
    return bytes(body)


# ---------------------------------------------------------------- the model, loaded once

def model_version(model_dir: str) -> str:
    """A digest of the files the model is loaded from (an ensemble's: its own and both models')."""
    directory = Path(model_dir)
    roots = [directory]
    if (directory / "ensemble.json").is_file():
        spec = json.loads((directory / "ensemble.json").read_text())
        roots += [directory / spec["transformer"], directory / spec["baseline"]]
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- the deployment

class Classifier:
    def __init__(self, options: dict):
        from arxivcls.categories import category_name
        from arxivcls.ensemble import load_model

        self.options = ServeOptions(**options)
        threads = max(1, int(self.options.cpus_per_replica))
        self.predict_probs, self.id2label, settings = load_model(self.options.model_dir, num_threads=threads)
        self.info = {"model": Path(self.options.model_dir).name, "version": model_version(self.options.model_dir),
                     **settings, "labels": [{"code": c, "name": category_name(c)} for _, c in sorted(self.id2label.items())],
                     "max_papers": self.options.max_papers, "max_chars": self.options.max_chars,
                     "max_batch_size": self.options.max_batch_size}
        self.names = {c: category_name(c) for c in self.id2label.values()}
        self.served = {"papers": 0, "forward_passes": 0}  # this replica's, since it started
        self.forward_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.predict_batch.set_max_batch_size(self.options.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000)

    async def forward(self, texts: list[str]) -> np.ndarray:
        """One forward pass, on the replica's one forward thread (one pass at a time, one set of
        torch threads); the event loop keeps reading and queueing requests meanwhile."""
        self.served["forward_passes"] += 1
        self.served["papers"] += len(texts)
        return await asyncio.get_running_loop().run_in_executor(self.forward_thread, self.predict_probs, texts)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_batch(self, texts: list[str]) -> list[np.ndarray]:
        """One paper per item; papers of concurrent requests share one forward pass."""
        return list(await self.forward(texts))

    async def predict_paper(self, text: str) -> np.ndarray:
        if self.options.max_batch_size == 1:  # no batching: no batch queue either (it waits for company)
            return (await self.forward([text]))[0]
        return await self.predict_batch(text)

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        path, root = request.scope["path"], request.scope.get("root_path", "").rstrip("/")
        path = (path[len(root):] if root and path.startswith(root) else path).rstrip("/") or "/"  # under the route prefix
        try:
            if path not in ROUTES:
                raise BadRequest(404, f"no such endpoint {path[:80]}; try GET /, GET /health or POST /predict")
            if request.method != ROUTES[path]:
                raise BadRequest(405, f"{path} takes {ROUTES[path]} requests")
            if path == "/":
                return JSONResponse({**self.info, "served": self.served})
            if path == "/health":
                return JSONResponse({"status": "ok"})
            return JSONResponse(await self.answer(await read_body(request, self.options.max_body_bytes)))
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except Exception as e:  # a bug, not the request: the replica keeps serving
            __import__("logging").getLogger("ray.serve").exception("predict failed")
            return JSONResponse({"error": f"internal error ({type(e).__name__})"}, status_code=500)

    async def answer(self, body: bytes) -> dict:
        from arxivcls.predict import top_k

        texts, k = parse_request(body, self.options)
        probs = np.stack(await asyncio.gather(*(self.predict_paper(t) for t in texts)))
        ranked = top_k(probs, self.id2label, k)
        return {"version": self.info["version"],
                "predictions": [[{"category": c, "name": self.names[c], "probability": p} for c, p in ranks]
                                for ranks in ranked]}


def build_app(options: ServeOptions):
    deployment = serve.deployment(Classifier, name="Classifier").options(
        num_replicas=options.replicas, ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
        max_ongoing_requests=max(32, 2 * options.max_batch_size), max_queued_requests=MAX_QUEUED,
        max_constructor_retry_count=3)
    return deployment.bind(dataclasses.asdict(options))


def deploy(options: ServeOptions, host: str = "127.0.0.1", port: int = 8000, name: str = APP, route_prefix: str = "/") -> str:
    """Start Serve on the connected Ray cluster (HTTP on host:port of the head node) and the
    app; returns its URL once every replica is up."""
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    try:
        serve.run(build_app(options), name=name, route_prefix=route_prefix)
    except RuntimeError as e:
        raise UserError(f"the deployment did not start: {str(e).splitlines()[0][:300]}")
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


# ---------------------------------------------------------------- the command

def serve_cli(args) -> None:
    import os
    import signal

    import ray

    from arxivcls.file_scoring import model_spec
    from arxivcls.raycluster import connect_ray

    options = ServeOptions(args.model, args.replicas, args.cpus_per_replica, args.gpus_per_replica,
                           args.max_batch_size, args.batch_wait_ms, args.max_papers, args.max_chars)
    options.check()
    model_spec("", args.model)  # a UserError for a directory that is not a model, before Ray starts
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))
    if not joined:
        _check_port(args.host, args.port)
    # Ctrl-C and SIGTERM stop it, also when a script started it in the background (with SIGINT ignored).
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)
    connect_ray(args.address)
    try:
        url = deploy(options, args.host, args.port)
        print(f"serving {args.model} at {url}: POST /predict, GET /health, GET / (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.delete(APP) if joined else serve.shutdown()  # on a shared cluster, only this app goes
        ray.shutdown()


def _check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}")
