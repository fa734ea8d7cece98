"""Serving benchmark: p50/p99 latency of /score and throughput under concurrent clients, against real uvicorn.

    python benchmarks/serve_latency.py [RUN_DIR] [--duration 60]

Without RUN_DIR the ML-100K DIN run (configs/ml-100k.yaml) is prepared and trained under --work-dir first
(resumable: a finished run is reused). The server runs `reaseq.serve.app.serve` in a child process on
loopback; the clients (httpx) run in this process, on the same machine, so they compete for its cores.
Afterwards (server stopped) the row in_process_<candidates> times each step of one request in this process.

Before/after comparisons: --no-one-user-forward --http h11 --loop asyncio is the serving path before the
one-user forward and the C HTTP stack; write such runs elsewhere with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, free_port, make_row, open_run

from reaseq import pipeline
from reaseq.config import RunConfig
from reaseq.serve.config import ServeConfig
from reaseq.serve.loader import load_run_config

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request would load the client

STARTUP_TIMEOUT_S = 300.0
RSS_SAMPLE_S = 0.25
REQUEST_POOL = 512  # distinct pre-encoded request bodies the clients cycle through
WARMUP_REQUESTS = 50
IN_PROCESS_REPEATS = 300
BYTES_PER_MB = 1024 * 1024
TARGET_P99_MS = 10.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, default=None, help="a trained ctr/din run folder (default: train the ML-100K demo run)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml-100k.yaml", help="config of the run trained when RUN_DIR is not given")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for that run, e.g. train.epochs=3")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / "serve")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per concurrency level")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per candidate count for p50/p99")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--candidates", type=int, default=100, help="candidates per request in the throughput runs")
    parser.add_argument("--threads", type=int, default=ServeConfig().num_threads, help="torch threads per forward pass (server and in-process comparison)")
    parser.add_argument("--scoring-threads", type=int, default=ServeConfig().scoring_threads, help="forward passes the server runs at once")
    parser.add_argument("--no-one-user-forward", dest="one_user_forward", action="store_false", help="score with the ranker's own forward (history encoded per candidate), the path before the one-user factorisation")
    parser.add_argument("--http", choices=["auto", "h11", "httptools"], default=ServeConfig().http, help="uvicorn HTTP parser (auto: httptools when installed)")
    parser.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default=ServeConfig().loop, help="uvicorn event loop (auto: uvloop when installed)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the request mix")
    parser.add_argument("--skip-onnx", action="store_true", help="skip ONNX Runtime in the in-process breakdown")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_latency.json")
    return parser.parse_args()


def trained_run(args: argparse.Namespace) -> tuple[Path, RunConfig]:
    """The run to serve: the one given, or the ML-100K DIN run trained (once) under --work-dir."""
    if args.run_dir is not None:
        return args.run_dir, load_run_config(args.run_dir)
    run = open_run(args.config, [*args.overrides, f"data_cache={ROOT / '.cache' / 'reaseq'}"], args.work_dir / "ml-100k-din")
    pipeline.train(run)
    return run.root, run.config


def start_server(run_dir: Path, cfg: ServeConfig) -> subprocess.Popen:
    """`serve()` in a child process (the same code path as `reaseq serve`)."""
    code = (
        "from pathlib import Path; from reaseq.serve.app import serve; from reaseq.serve.config import ServeConfig; "
        f"serve(Path({str(run_dir)!r}), ServeConfig.model_validate_json({cfg.model_dump_json()!r}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def wait_ready(process: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become ready")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / BYTES_PER_MB
    return float("nan")


def request_pool(run_dir: Path, n_candidates: int, rng: np.random.Generator) -> list[bytes]:
    """Pre-encoded /score bodies: random known users, random distinct candidate items."""
    users = pl.read_parquet(run_dir / "data" / "users.parquet")["user_id"].to_list()
    items = pl.read_parquet(run_dir / "data" / "items.parquet")["item_id"].to_list()
    bodies = []
    for _ in range(REQUEST_POOL):
        candidates = rng.choice(len(items), size=min(n_candidates, len(items)), replace=False)
        bodies.append(json.dumps({"user_id": users[int(rng.integers(len(users)))], "candidates": [items[i] for i in candidates]}).encode())
    return bodies


def percentiles(latencies_s: list[float], prefix: str = "") -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {f"{prefix}p50_ms": float(np.percentile(ms, 50)), f"{prefix}p99_ms": float(np.percentile(ms, 99)), f"{prefix}mean_ms": float(ms.mean())}


def server_seconds(response: httpx.Response) -> float:
    """The model time the server reports in its Server-Timing header."""
    return float(response.headers["server-timing"].split("dur=")[1]) / 1000.0


def sequential_latency(base: str, bodies: list[bytes], n_requests: int) -> dict[str, float]:
    """One client, one request at a time, keep-alive: the latency a single caller sees (and the server's share)."""
    headers = {"content-type": "application/json"}
    latencies, server, errors = [], [], 0
    with httpx.Client(base_url=base, timeout=30.0) as client:
        for i in range(WARMUP_REQUESTS):
            client.post("/score", content=bodies[i % len(bodies)], headers=headers)
        for i in range(n_requests):
            start = time.perf_counter()
            response = client.post("/score", content=bodies[i % len(bodies)], headers=headers)
            latencies.append(time.perf_counter() - start)
            if response.status_code == 200:
                server.append(server_seconds(response))
            else:
                errors += 1
    return {**percentiles(latencies), **percentiles(server, "server_"), "errors": float(errors)}


async def throughput(base: str, bodies: list[bytes], clients: int, duration_s: float, pid: int) -> dict[str, float]:
    """`clients` concurrent callers for `duration_s`: requests/s, errors, latency and the server's peak RSS."""
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors = 0
    rss = [rss_mb(pid)]
    stop = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def caller(offset: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                response = await client.post("/score", content=bodies[i % len(bodies)], headers=headers)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1
            i += clients

    async def sample_rss() -> None:
        while time.perf_counter() < stop:
            await asyncio.sleep(RSS_SAMPLE_S)
            rss.append(rss_mb(pid))

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:
        await asyncio.gather(sample_rss(), *(caller(k, client) for k in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "rps": len(latencies) / elapsed, "errors": float(errors), "rss_mb": max(rss), "rss_start_mb": rss[0], "rss_end_mb": rss[-1],
        **(percentiles(latencies) if latencies else {}),
    }


def in_process_breakdown(run_dir: Path, n_candidates: int, threads: int, skip_onnx: bool, one_user_forward: bool = True) -> dict[str, float]:
    """Median ms of each step of one n-candidate /score request in this process (no network), and the whole app.

    validate: JSON body -> request model; batch: ids -> tensors (Scorer.batch); forward: the forward pass the server
    runs (Scorer.scoring_model: the one-user forward unless --no-one-user-forward); eager: the ranker's own forward,
    model(batch); onnx: ONNX Runtime on the same batch; render: the JSON answer; app: the whole ASGI app (middleware,
    FastAPI, validation, thread hand-off, scoring, answer) without HTTP. forward and eager are timed alternately.
    """
    from fastapi.responses import JSONResponse

    from reaseq.serve.app import ServingState, create_app, score_request_model
    from reaseq.serve.export import OnnxScorer, export_onnx

    torch.set_num_threads(threads)
    serve_cfg = ServeConfig(num_threads=threads, max_candidates=max(1000, n_candidates), log_level="warning", one_user_forward=one_user_forward)
    state = ServingState(run_dir, serve_cfg)
    scorer = state.store.current
    rng = np.random.default_rng(0)
    bodies = request_pool(run_dir, n_candidates, rng)[:64]
    request_model = score_request_model(serve_cfg)
    requests = [request_model.model_validate_json(body) for body in bodies]
    batches = [scorer.batch(r.user_id, r.candidates) for r in requests]
    scores = [scorer.predict(b).tolist() for b in batches]

    def median_ms(fn: Callable[[int], object]) -> float:
        for i in range(WARMUP_REQUESTS):
            fn(i)
        times = []
        for i in range(IN_PROCESS_REPEATS):
            start = time.perf_counter()
            fn(i % len(bodies))
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1000.0)

    result: dict[str, float] = {}
    result["validate_ms"] = median_ms(lambda i: request_model.model_validate(json.loads(bodies[i % len(bodies)])))
    result["batch_ms"] = median_ms(lambda i: scorer.batch(requests[i % len(bodies)].user_id, requests[i % len(bodies)].candidates))
    with torch.inference_mode():  # alternate the two forwards so that a change in machine load hits both alike
        forward_s, eager_s = [], []
        for i in range(WARMUP_REQUESTS + IN_PROCESS_REPEATS):
            for model, times in ((scorer.scoring_model, forward_s), (scorer.model, eager_s)):
                start = time.perf_counter()
                torch.sigmoid(model(batches[i % len(bodies)])).tolist()
                times.append(time.perf_counter() - start)
        result["forward_ms"] = float(np.median(forward_s[WARMUP_REQUESTS:]) * 1000.0)
        result["eager_ms"] = float(np.median(eager_s[WARMUP_REQUESTS:]) * 1000.0)
    result["render_ms"] = median_ms(lambda i: JSONResponse({"scores": scores[i % len(bodies)], "model": scorer.name, "tables_version": scorer.tables.version}))
    app = create_app(run_dir, serve_cfg, state=state)
    result["app_ms"] = asyncio.run(_app_median_ms(app, bodies))
    with torch.inference_mode():
        result["forward_max_abs_diff"] = max(float((scorer.predict(b) - torch.sigmoid(scorer.scoring_model(b))).abs().max()) for b in batches)
    if not skip_onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(scorer.model, batches[0], Path(tmp) / "ranker.onnx")
            onnx_scorer = OnnxScorer(path, num_threads=threads)
            result["max_abs_diff"] = max(float(np.abs(onnx_scorer.predict(b) - scorer.predict(b).numpy()).max()) for b in batches)
            result["onnx_ms"] = median_ms(lambda i: onnx_scorer.predict(batches[i % len(bodies)]))
        result["eager_over_onnx"] = result["eager_ms"] / result["onnx_ms"]
    return result


async def _app_median_ms(app: Any, bodies: list[bytes]) -> float:
    """Median ms of POST /score handed straight to the ASGI app (its lifespan running): everything but HTTP."""

    async def call(body: bytes) -> None:
        sent: list[dict] = []
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if delivered:
                await asyncio.Event().wait()  # no disconnect: the request stays open until answered
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        headers = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http", "path": "/score", "raw_path": b"/score",
                 "query_string": b"", "root_path": "", "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
        await app(scope, receive, send)
        if sent[0]["status"] != 200:
            raise SystemExit(f"in-process /score answered {sent[0]['status']}")

    async with app.router.lifespan_context(app):
        times: list[float] = []
        for i in range(WARMUP_REQUESTS):
            await call(bodies[i % len(bodies)])
        for i in range(IN_PROCESS_REPEATS):
            start = time.perf_counter()
            await call(bodies[i % len(bodies)])
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def resolved(choice: str, fast: str, fallback: str) -> str:
    """What uvicorn's "auto" picks: the C implementation when it is installed."""
    if choice != "auto":
        return choice
    return fast if importlib.util.find_spec(fast) is not None else fallback


def main() -> None:
    args = parse_args()
    run_dir, run_cfg = trained_run(args)
    load_before = os.getloadavg()[0]  # the clients share the machine with the server and any other job: say how busy it was
    rng = np.random.default_rng(args.seed)
    serve_cfg = ServeConfig(
        port=free_port(), num_threads=args.threads, scoring_threads=args.scoring_threads, log_level="warning", max_candidates=max(1000, args.candidates),
        one_user_forward=args.one_user_forward, http=args.http, loop=args.loop,
    )
    base = f"http://127.0.0.1:{serve_cfg.port}"
    rows: list[dict[str, Any]] = []
    server = start_server(run_dir, serve_cfg)
    try:
        wait_ready(server, base)
        for n in (1, 100):
            started = time.perf_counter()
            result = sequential_latency(base, request_pool(run_dir, n, rng), args.requests)
            rows.append(make_row(f"candidates_{n}", [result], [0.0], [time.perf_counter() - started], requests=args.requests, clients=1, candidates=n))
            print(f"  {n:>3} candidates: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms (server {result['server_p50_ms']:.2f} / {result['server_p99_ms']:.2f})", file=sys.stderr)
        bodies = request_pool(run_dir, args.candidates, rng)
        for clients in args.clients:
            started = time.perf_counter()
            result = asyncio.run(throughput(base, bodies, clients, args.duration, server.pid))
            rows.append(make_row(f"clients_{clients}", [result], [0.0], [time.perf_counter() - started], clients=clients, candidates=args.candidates, duration_s=args.duration))
            print(f"  {clients:>3} clients: {result['rps']:.0f} req/s, {result['errors']:.0f} errors, peak RSS {result['rss_mb']:.0f} MiB", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    started = time.perf_counter()
    result = in_process_breakdown(run_dir, args.candidates, args.threads, args.skip_onnx, args.one_user_forward)
    rows.append(make_row(f"in_process_{args.candidates}", [result], [0.0], [time.perf_counter() - started], candidates=args.candidates))
    print("  in process, median ms: " + ", ".join(f"{k.removesuffix('_ms')} {v:.3f}" for k, v in result.items() if k.endswith("_ms")), file=sys.stderr)
    protocol = {
        "name": "serve",
        "text": (
            f"POST /score on uvicorn (1 worker, {args.scoring_threads} scoring threads x {args.threads} torch threads, http {resolved(args.http, 'httptools', 'h11')}, "
            f"loop {resolved(args.loop, 'uvloop', 'asyncio')}, {'one-user' if args.one_user_forward else 'per-row (model(batch))'} forward) over loopback; latency rows: {args.requests} sequential keep-alive "
            f"requests after {WARMUP_REQUESTS} warm-up, random known users and distinct random candidates; throughput rows: N concurrent httpx "
            f"clients for {args.duration:g} s, {args.candidates} candidates per request; rss_mb = peak server VmRSS. Client and server share "
            f"this machine's {os.cpu_count()} cores."
        ),
        "target": f"p99 <= {TARGET_P99_MS:g} ms at 100 candidates; 0 errors at 64 clients",
    }
    finish("serve_latency", run_cfg, protocol, [args.seed], rows, ["p50_ms", "p99_ms", "server_p50_ms", "server_p99_ms", "rps", "errors", "rss_mb", "app_ms", "forward_ms", "eager_ms", "onnx_ms"], args.out, run_dir=str(run_dir),
           load_average_1min={"start": load_before, "end": os.getloadavg()[0]}, cores=os.cpu_count())


if __name__ == "__main__":
    main()
