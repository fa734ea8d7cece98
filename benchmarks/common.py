"""Shared plumbing for the benchmark scripts: runs, cached rows, the RecBole peer, the result JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from reaseq import pipeline
from reaseq.config import RunConfig, load_config
from reaseq.evaluate.aggregate import aggregate_runs
from reaseq.evaluate.results import benchmark_record, markdown_table
from reaseq.io import write_json
from reaseq.runs import RunDir

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RECBOLE_PYTHON = ROOT / ".venv-recbole" / "bin" / "python"
RECBOLE_RUNNER = ROOT / "benchmarks" / "peers" / "recbole_runner.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a server the benchmark starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command_line() -> str:
    """The command that reproduces this benchmark, as typed (script path relative to the repository)."""
    script = Path(sys.argv[0]).resolve()
    script_arg = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return " ".join(shlex.quote(a) for a in ["python", script_arg, *sys.argv[1:]])


def peer_parser(description: str, config: str, work: str, recbole_cost: str) -> argparse.ArgumentParser:
    """The arguments every "ours beside RecBole" benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / config)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. train.epochs=3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--recbole-seeds", type=int, nargs="+", default=[2024], help=f"RecBole costs {recbole_cost} on 2 cores")
    parser.add_argument("--recbole-budget-s", type=float, default=1800.0, help="training+validation budget per RecBole seed")
    parser.add_argument("--skip-recbole", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both systems")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / work)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="recompute rows cached in --work-dir")
    return parser


def with_model(cfg: RunConfig, name: str) -> RunConfig:
    """The same config with another model name."""
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": name})})


def open_run(config: Path, overrides: list[str], run_dir: Path) -> RunDir:
    """A run directory for the benchmark with its data prepared."""
    cfg = load_config(config, [*overrides, f"run_dir={run_dir}", "train.progress=false"])
    run = RunDir(cfg.run_dir, cfg)
    pipeline.prepare(run)
    return run


def cached(path: Path, compute: Callable[[], dict[str, Any]], force: bool) -> dict[str, Any]:
    """Reuse a finished row result (so an interrupted benchmark resumes), else compute and save it."""
    if path.exists() and not force:
        print(f"  reusing {path}", file=sys.stderr)
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    write_json(path, result)
    return result


def run_recbole(model: str, data_dir: Path, dataset: str, seed: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """Run RecBole 1.2.1 in its own environment on our exported split; returns its result JSON."""
    if not RECBOLE_PYTHON.exists():
        raise SystemExit(f"{RECBOLE_PYTHON} is missing: run `make recbole` (benchmarks/peers/setup_recbole.sh) first, or pass --skip-recbole")
    command = [str(RECBOLE_PYTHON), str(RECBOLE_RUNNER), "--data-dir", str(data_dir), "--dataset", dataset, "--model", model, "--seed", str(seed), "--out", str(out), *extra]
    print("  $ " + " ".join(shlex.quote(c) for c in command), file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    result = json.loads(out.read_text(encoding="utf-8"))
    result.setdefault("wall_s", time.perf_counter() - started)
    return result


def make_row(name: str, per_seed: list[dict[str, float]], samples_per_s: list[float], wall_s: list[float], **extra: Any) -> dict[str, Any]:
    """One row of the benchmark JSON: metrics as mean/sd/values over seeds."""
    return {
        "name": name,
        "metrics": aggregate_runs(per_seed),
        # A model without a training pass (popularity counts) has no training throughput.
        "train_samples_per_s": sum(samples_per_s) / len(samples_per_s) if any(samples_per_s) else None,
        "wall_s": sum(wall_s),
        **extra,
    }


def finish(name: str, cfg: RunConfig, protocol: dict[str, Any], seeds: list[int], rows: list[dict[str, Any]], metrics: list[str], out: Path, **extra: Any) -> dict[str, Any]:
    """Write the benchmark JSON and print its table."""
    record = benchmark_record(name, command_line(), cfg.dataset.name, protocol, seeds, rows)
    record.update(extra)
    write_json(out, record)
    print(markdown_table(record, metrics))
    print(f"\nwrote {out}")
    return record
