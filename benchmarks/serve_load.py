"""Serving load: single-paper requests to `arxivcls serve` on loopback, with and without batching.

Two apps of arxivcls.serve run side by side on a private local Ray cluster, the same model, one
replica each with --cpus torch threads:

  batching     @serve.batch up to --max-batch-size papers per forward pass, waiting --batch-wait-ms
  no batching  max_batch_size 1: one forward pass per paper

At each concurrency level C, a client of C connections (aiohttp, one thread, in this process)
sends a fixed number of single-paper requests (real papers, title + abstract) to one app, then
to the other (which app goes first alternates by level); it stops when all are answered.
Throughput = requests / wall seconds; latency = request sent -> answer read, per request.
Papers per forward pass come from each replica's counters (GET /).

Only 127.0.0.1 is contacted. The default model is the tiny random BERT (2 layers, 32 wide),
whose forward pass is a few milliseconds: the table measures the serving path (HTTP, proxy,
router, batching) more than the model. `--model minilm` (or a saved model directory) measures
a real model's forward passes too.
"""
import argparse
import asyncio
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, Report, local_ray, md_table

NAME = "serve_load"
MODES = {"batching": None, "no batching": 1}


def read_papers(n: int, seed: int) -> list[dict]:
    import pandas as pd

    df = pd.read_parquet(DATA, columns=["title", "summary"]).sample(n=n, random_state=seed)
    return [{"title": t, "abstract": a} for t, a in zip(df.title, df.summary)]


def build_model(kind: str, workdir: Path, papers: list[dict]) -> str:
    if kind == "tiny":
        from arxivcls.models import make_tiny_bert

        return str(make_tiny_bert(workdir / "tiny", [p["title"] + " " + p["abstract"] for p in papers], num_labels=10))
    if kind == "minilm":
        from benchmarks.eval_throughput import build_models

        from arxivcls.models import minilm_path

        return build_models(minilm_path(), {i: f"class{i}" for i in range(10)}, [1], workdir)[0]
    return kind


async def load(url: str, papers: list[dict], concurrency: int, requests: int) -> dict:
    """`requests` single-paper POSTs over `concurrency` connections; per-request latency."""
    import aiohttp

    assert url.startswith("http://127.0.0.1:")  # loopback only
    latencies, errors, queue = [], 0, iter(range(requests))

    async def client(session):
        nonlocal errors
        for i in queue:
            started = time.perf_counter()
            async with session.post(f"{url}/predict", json={"papers": [papers[i % len(papers)]], "top_k": 3}) as r:
                await r.read()
                errors += r.status != 200
            latencies.append(time.perf_counter() - started)

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": requests, "errors": errors, "seconds": round(seconds, 1), "req/s": round(requests / seconds, 1),
            **{f"p{q} ms": round(float(np.percentile(ms, q))) for q in (50, 95, 99)}}


def served(url: str) -> dict:
    """The replica's GET / answer: model settings and its counters."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/", timeout=60) as r:
        return json.loads(r.read())


def measure(urls: dict, papers: list[dict], levels: list[int], requests: int) -> list[dict]:
    rows = []
    for n, level in enumerate(levels):
        for mode in (list(MODES) if n % 2 == 0 else list(MODES)[::-1]):
            before = served(urls[mode])["served"]
            row = asyncio.run(load(urls[mode], papers, level, requests))
            after = served(urls[mode])["served"]
            passes = after["forward_passes"] - before["forward_passes"]
            rows.append({"mode": mode, "concurrency": level, **row,
                         "papers/forward pass": round((after["papers"] - before["papers"]) / max(1, passes), 1)})
            print(rows[-1], flush=True)
    return rows


def gains(rows: list[dict]) -> list[dict]:
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    out = []
    for level in sorted({r["concurrency"] for r in rows}):
        b, nb = by[("batching", level)], by[("no batching", level)]
        out.append({"concurrency": level, "throughput gain": b["req/s"] / nb["req/s"],
                    "p50 ratio": b["p50 ms"] / nb["p50 ms"], "p99 ratio": b["p99 ms"] / nb["p99 ms"]})
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | minilm | a saved model directory")
    parser.add_argument("--requests", type=int, default=64, help="single-paper requests per mode and concurrency level")
    parser.add_argument("--concurrency", default="1,4,8,16", help="client connections, comma-separated")
    parser.add_argument("--cpus", type=int, default=2, help="torch threads (and Ray CPUs) of each replica")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs of each of the two replicas (both on one GPU: 0.5)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    from ray import serve

    from arxivcls.serve import ServeOptions, deploy

    report = Report(NAME, "Serving load: single-paper requests, with and without dynamic batching")
    papers = read_papers(200, args.seed)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp, local_ray(num_cpus=2 * args.cpus):
        model_dir = build_model(args.model, Path(tmp), papers)
        urls = {}
        for mode, size in MODES.items():
            options = ServeOptions(model_dir, cpus_per_replica=args.cpus, gpus_per_replica=args.gpus, max_batch_size=size or args.max_batch_size,
                                   batch_wait_ms=args.batch_wait_ms)
            slug = mode.replace(" ", "-")
            urls[mode] = deploy(options, port=port, name=f"bench-{slug}", route_prefix=f"/{slug}")
            asyncio.run(load(urls[mode], papers, 4, 16))  # warm-up, not timed
        try:
            settings = served(urls["batching"])
            rows = measure(urls, papers, levels, args.requests)
        finally:
            serve.shutdown()
    write(report, args, rows, settings)


def write(report: Report, args, rows: list[dict], settings: dict) -> None:
    ratio = gains(rows)
    high = [g for g in ratio if g["concurrency"] >= 8]
    report.add(f"Model: {args.model} (max_length {settings['max_length']} and {settings['precision']}, as "
               f"`arxivcls predict`); one replica per mode with {args.cpus} "
               f"torch threads; batching = up to {args.max_batch_size} papers per forward pass, "
               f"{args.batch_wait_ms:g} ms wait. {args.requests} single-paper requests per row, client and server on the "
               "same machine (the client's CPU counts against the server's). With this many requests p99 is "
               "close to the slowest request.")
    report.add("## Throughput and latency\n\n" + md_table(rows, floatfmt="{:g}"))
    report.add("## Batching against no batching\n\n" + md_table(ratio, floatfmt="{:.2f}"))
    if high:
        low = min(g["throughput gain"] for g in high)
        report.add(f"Target: batching gives more throughput than no batching at every concurrency >= 8: "
                   f"{'**met**' if low > 1 else '**missed**'} (lowest gain {low:.2f}x).")
    report.write()


if __name__ == "__main__":
    main()
