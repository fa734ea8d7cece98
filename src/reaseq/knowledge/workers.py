"""Knowledge generation scaled out: one `reaseq knowledge --shard i/N` per OS process (or Ray task), then one merge.

A worker runs the same code as `reaseq knowledge --shard i/N` (open the run, `run_knowledge` on one shard), so it
behaves exactly like a shard started by hand on another machine. It is started as `python -m
reaseq.knowledge.workers`, which takes the same options, because the launcher prepares the data once and this
entry point skips importing the ranker stack (torch, scikit-learn): about 1 s of start-up instead of about 9 s
on a busy machine. The workers share the run's cache folder (entries are written atomically, one file per key)
and its manifest (updates are serialised by a lock), so finished shards are skipped when everything is run again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reaseq.config import RunConfig, load_config
from reaseq.errors import ConfigError, ReaSeqError
from reaseq.knowledge.accounting import items_line
from reaseq.knowledge.outputs import ACCOUNTING_FILE, RECORDS_FILE, TRACES_FILE
from reaseq.knowledge.records import KnowledgeRecord, TraceRecord, read_jsonl
from reaseq.runs import RunDir

log = logging.getLogger("reaseq")

Backend = Literal["process", "ray"]
WORKER_MODULE = "reaseq.knowledge.workers"  # `python -m` entry of one worker (see the module docstring)
WORKER_LOG_DIR = Path("knowledge") / "workers"  # one log per worker (its stdout and stderr), inside the run
TAIL_LINES = 15  # lines of a failed worker's log quoted in the error: enough for a traceback's end
POLL_S = 0.2  # how often the launcher looks at its workers


class WorkerError(ReaSeqError):
    """One or more knowledge workers failed; the message names each shard, its exit status and its log's end."""

    def __init__(self, failures: Sequence[str], log_dir: Path) -> None:
        self.failures = list(failures)
        body = "\n".join(f"  - {failure}" for failure in self.failures)
        super().__init__(
            f"{len(self.failures)} knowledge worker(s) failed:\n{body}\n"
            f"Worker logs: {log_dir}. Fix: remove the cause and run the same command again; finished shards are skipped"
        )


@dataclass
class WorkerResult:
    """How one worker ended."""

    shard: str
    returncode: int | None  # None: it never exited by itself (stopped on timeout, or its Ray task was lost)
    wall_s: float
    log: Path
    error: str | None = None  # why there is no exit code, when the launcher knows


def shard_specs(workers: int) -> list[str]:
    """'0/N' ... 'N-1/N'."""
    return [f"{index}/{workers}" for index in range(workers)]


def worker_command(
    python: str, config_path: Path | None, overrides: Sequence[str], run_dir: Path, shard: str, regenerate: bool = False
) -> list[str]:
    """The command line of one worker: `reaseq knowledge` on one shard, through this module's light entry point."""
    command = [python, "-m", WORKER_MODULE, "--run-dir", str(run_dir), "--shard", shard]
    if config_path is not None:
        command += ["--config", str(config_path)]
    for override in overrides:
        command += ["--set", override]
    if regenerate:
        command.append("--regenerate")
    return command


def log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a worker's log, indented for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "    (no log was written)"
    except OSError as exc:
        return f"    (the log cannot be read: {exc})"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(f"    | {line}" for line in tail) or "    (the log is empty)"


def describe_exit(result: WorkerResult, timeout_s: float | None) -> str | None:
    """Why a worker failed, or None when it exited cleanly."""
    if result.returncode == 0:
        return None
    if result.error is not None:
        how = result.error
    elif result.returncode is None:
        how = f"still running after {timeout_s:g}s, stopped" if timeout_s is not None else "stopped"
    elif result.returncode < 0:
        how = f"killed by signal {signal.Signals(-result.returncode).name}"
    else:
        how = f"exit code {result.returncode}"
    return f"shard {result.shard}: {how} (log {result.log}):\n{log_tail(result.log)}"


def first_error(shard_dir: Path) -> str | None:
    """The root cause of a shard's failures: the first failed agent call in its traces, else the first record error."""
    traces = shard_dir / TRACES_FILE
    if traces.exists():
        # Planner traces come first: an unreachable backend shows up there as the real error, while the
        # records only say that no schema could be planned.
        for trace in read_jsonl(traces, TraceRecord):
            for step in trace.steps:
                if step.error:
                    return f"{step.agent}: {step.error}"
    records = shard_dir / RECORDS_FILE
    if records.exists():
        return next((r.error for r in read_jsonl(records, KnowledgeRecord) if r.error), None)
    return None


def shard_failure(shard_dir: Path, shard: str) -> str | None:
    """A shard whose every item failed (an unreachable or misconfigured backend), described; None when it has successes."""
    try:
        accounting = json.loads((shard_dir / ACCOUNTING_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return f"shard {shard}: the worker exited cleanly but left no readable {ACCOUNTING_FILE} in {shard_dir}"
    ok, failed = int(accounting.get("items_ok", 0)), int(accounting.get("items_failed", 0))
    if ok or not failed:
        return None
    first = first_error(shard_dir) or "no error recorded"
    return (
        f"shard {shard}: all {failed} items failed (first error: {first}). Check knowledge.backend, then delete {shard_dir} "
        "so that this shard is redone (its successful calls stay cached)"
    )


def _open_run(config_path: Path | None, overrides: Sequence[str], run_dir: Path | None) -> RunDir:
    cfg: RunConfig = load_config(config_path, list(overrides))
    if run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": Path(run_dir)})
    return RunDir(cfg.run_dir, cfg)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End a worker this launcher started (and only it)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (kill, a job scheduler) would end the launcher without running its `finally`, leaving workers behind.
    raise SystemExit(128 + signum)


def run_processes(commands: dict[str, list[str]], logs: dict[str, Path], timeout_s: float | None = None) -> list[WorkerResult]:
    """Start one OS process per shard, wait for all (stopping them after timeout_s), and say how each ended."""
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there may a signal handler be set
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return _run_processes(commands, logs, timeout_s)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run_processes(commands: dict[str, list[str]], logs: dict[str, Path], timeout_s: float | None) -> list[WorkerResult]:
    started = time.perf_counter()
    running: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    results: dict[str, WorkerResult] = {}
    try:
        for shard, command in commands.items():
            logs[shard].parent.mkdir(parents=True, exist_ok=True)
            with open(logs[shard], "wb") as sink:  # the child keeps its own descriptor; a file cannot fill up like a pipe
                running[shard] = (subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, cwd=os.getcwd()), time.perf_counter())
            log.info("knowledge worker %s: started (pid %d)", shard, running[shard][0].pid)
        while len(results) < len(running):
            for shard, (process, began) in running.items():
                if shard not in results and process.poll() is not None:
                    results[shard] = WorkerResult(shard, process.returncode, time.perf_counter() - began, logs[shard])
                    log.info("knowledge worker %s: exit %d after %.1fs", shard, process.returncode, results[shard].wall_s)
            if timeout_s is not None and time.perf_counter() - started > timeout_s:
                for shard, (process, began) in running.items():
                    if shard not in results:
                        _stop(process)
                        results[shard] = WorkerResult(shard, None, time.perf_counter() - began, logs[shard])
                break
            time.sleep(POLL_S)
    finally:
        # Ctrl-C, SIGTERM or an error in the launcher: no worker is left running on its own.
        for process, _ in running.values():
            _stop(process)
    return [results[shard] for shard in commands]


def run_ray(commands: dict[str, list[str]], logs: dict[str, Path], address: str | None, num_cpus: float) -> list[WorkerResult]:
    """Run each shard's command as a Ray task (nodes must see the run folder, e.g. on shared storage)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(None, "backend", "Ray is not installed", "pip install 'ray[default]' on every node, or use the process backend") from None

    def run_one(command: list[str], log_path: str, cwd: str) -> tuple[int, float]:
        began = time.perf_counter()
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as sink:
            # The node's own interpreter: the launcher's path need not exist there.
            code = subprocess.run([sys.executable, *command[1:]], stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, check=False).returncode
        return code, time.perf_counter() - began

    if not ray.is_initialized():
        ray.init(address=address)
    task = ray.remote(num_cpus=num_cpus)(run_one)
    refs = {shard: task.remote(command, str(logs[shard]), os.getcwd()) for shard, command in commands.items()}
    results = []
    for shard, ref in refs.items():
        try:
            code, wall = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - the task itself died (node lost, out of memory): report it with its shard
            results.append(WorkerResult(shard, None, 0.0, logs[shard], error=f"Ray task failed ({type(exc).__name__}: {exc})"))
            continue
        results.append(WorkerResult(shard, code, wall, logs[shard]))
    return results


def run_sharded(
    config_path: Path | None,
    overrides: Sequence[str],
    run_dir: Path | None,
    workers: int,
    python: str = sys.executable,
    *,
    backend: Backend = "process",
    regenerate: bool = False,
    timeout_s: float | None = None,
    ray_address: str | None = None,
    ray_num_cpus: float = 1.0,
) -> list[KnowledgeRecord]:
    """Generate the run's knowledge with `workers` shard workers, then merge their records; raises WorkerError naming failed shards."""
    from reaseq import pipeline
    from reaseq.knowledge.step import merge_shards, output_dir

    if workers < 1:
        raise ConfigError(None, "workers", f"{workers} workers", "use at least 1 worker")
    run = _open_run(config_path, overrides, run_dir)
    if run.config.knowledge.source != "generate":
        raise ConfigError(None, "knowledge.source", "imported knowledge needs no workers", "run `reaseq knowledge` once instead")
    # Prepared once here: N workers preparing the same run at once would race on its data folder.
    pipeline.prepare(run)
    specs = shard_specs(workers)
    # Workers get an absolute run folder, so their own --run-dir and this one can never disagree.
    root = run.root.resolve()
    commands = {shard: worker_command(python, config_path, overrides, root, shard, regenerate) for shard in specs}
    logs = {shard: root / WORKER_LOG_DIR / f"{output_dir(run, shard).name}.log" for shard in specs}
    log.info("knowledge: %d workers (%s backend) on %s", workers, backend, root)
    if backend == "process":
        results = run_processes(commands, logs, timeout_s)
    elif backend == "ray":
        results = run_ray(commands, logs, ray_address, ray_num_cpus)
    else:
        raise ConfigError(None, "backend", f"unknown backend {backend!r}", "use 'process' or 'ray'")
    failures = [f for r in results if (f := describe_exit(r, timeout_s)) is not None]
    failures += [f for r in results if r.returncode == 0 and (f := shard_failure(output_dir(run, r.shard), r.shard)) is not None]
    if failures:
        raise WorkerError(failures, root / WORKER_LOG_DIR)
    records = merge_shards(run, [output_dir(run, shard) for shard in specs])
    failed = sum(r.status == "failed" for r in records)
    log.info("knowledge: merged %d records from %d workers (%d failed items)", len(records), workers, failed)
    return records


def worker_main(argv: Sequence[str] | None = None) -> int:
    """One worker: `reaseq knowledge` on one shard of an already prepared run; exit 2 with one line on a ReaSeq error."""
    from reaseq.knowledge.step import output_dir, run_knowledge

    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}", description=worker_main.__doc__)
    parser.add_argument("--config", "-c", type=Path, default=None)
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[])
    parser.add_argument("--run-dir", "-r", type=Path, default=None)
    parser.add_argument("--shard", required=True)
    parser.add_argument("--regenerate", action="store_true")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        run = _open_run(args.config, args.overrides, args.run_dir)
        summary = run_knowledge(run, shard=args.shard, regenerate=args.regenerate)
    except ReaSeqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"knowledge: {items_line(summary)}, in {summary['wall_seconds']:.1f}s")
    print(f"records: {output_dir(run, args.shard)}")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
