"""The real server: `serve()` under uvicorn in a child process, scored over loopback HTTP, stopped with SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

from reaseq.serve.config import ServeConfig

STARTUP_TIMEOUT_S = 60.0
POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, cfg: ServeConfig) -> subprocess.Popen:
    """`serve(run_dir, cfg)` in a child process, logging to its stderr."""
    code = (
        "import logging, sys; from pathlib import Path; "
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
        "from reaseq.serve.app import serve; from reaseq.serve.config import ServeConfig; "
        f"serve(Path({str(run_dir)!r}), ServeConfig.model_validate_json({cfg.model_dump_json()!r}))"
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(process: subprocess.Popen, base: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(POLL_S)
    raise AssertionError("server did not become ready")


def test_serve_over_http_and_shut_down_gracefully(trained_run: Path) -> None:
    port = free_port()
    cfg = ServeConfig(port=port, log_level="info")
    process = start_server(trained_run, cfg)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base)
        items = pl.read_parquet(trained_run / "data" / "items.parquet").sort("item_idx")["item_id"].to_list()
        with httpx.Client(base_url=base, timeout=10.0) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            response = client.post("/score", json={"user_id": "user3", "candidates": items[:40], "history": items[40:45]})
            assert response.status_code == 200, response.text
            scores = response.json()["scores"]
            assert len(scores) == 40 and all(0.0 < s < 1.0 for s in scores)
            assert client.post("/score", json={"user_id": "user3", "candidates": ["nope"]}).status_code == 422
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    # uvicorn drains, runs the lifespan shutdown, then re-raises SIGTERM so that supervisors see why it stopped.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "Application shutdown complete" in stderr and "Finished server process" in stderr and "Traceback" not in stderr


def test_serve_refuses_a_run_without_a_ranker(tmp_path: Path) -> None:
    process = start_server(tmp_path, ServeConfig(port=free_port()))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "config.yaml" in stderr and "reaseq train" in stderr
