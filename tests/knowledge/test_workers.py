"""Knowledge generation over worker processes: same records as one process, failed shards named, resumable."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reaseq.errors import ConfigError
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl
from reaseq.knowledge.step import output_dir, records_path, run_knowledge
from reaseq.knowledge.workers import (
    WorkerError,
    describe_exit,
    run_processes,
    run_ray,
    run_sharded,
    shard_failure,
)
from tests.knowledge.scripted_server import ScriptedServer
from tests.knowledge.test_step import knowledge_run


def shard_steps(run_root: Path) -> dict[str, str]:
    """Shard step name -> when it started, from the manifest on disk."""
    steps = json.loads((run_root / "manifest.json").read_text(encoding="utf-8"))["steps"]
    return {name: step["started"] for name, step in steps.items() if name.startswith("knowledge_shard_")}


def test_three_workers_match_one_process_and_a_failed_shard_is_named_then_resumed(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    single = knowledge_run(synthetic, tmp_path / "single", server)
    run_knowledge(single)
    expected = read_jsonl(records_path(single), KnowledgeRecord)

    run = knowledge_run(synthetic, tmp_path, server)
    config = run.root / "config.yaml"  # the resolved config the run wrote, as a user would pass it
    # A file where shard 1 must write its folder: that worker crashes after all its model calls.
    blocker = output_dir(run, "1/3")
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(WorkerError) as info:
        run_sharded(config, [], None, 3)
    assert len(info.value.failures) == 1
    message = str(info.value)
    assert "shard 1/3: exit code 1" in message and "Error" in message  # the exception's last traceback line is quoted
    assert "shard 0/3" not in message and "shard 2/3" not in message
    # Both healthy workers recorded their step in the shared manifest at about the same time: neither was lost.
    finished = shard_steps(run.root)
    assert set(finished) == {"knowledge_shard_0-of-3", "knowledge_shard_2-of-3"}
    assert not records_path(run).exists()

    blocker.unlink()
    sent = len(server.requests)
    records = run_sharded(config, [], None, 3)
    assert records == expected == read_jsonl(records_path(run), KnowledgeRecord)
    # Shard 1 replays the calls its crashed worker cached in the shared folder; shards 0 and 2 are skipped.
    assert len(server.requests) == sent
    again = shard_steps(run.root)
    assert set(again) == {f"knowledge_shard_{i}-of-3" for i in range(3)}
    assert {k: again[k] for k in finished} == finished


def closed_port_url() -> str:
    """An OpenAI-style URL on a local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_shard_whose_backend_is_unreachable_is_a_failure_naming_it(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    backend = run.config.knowledge.backend.model_copy(update={"openai_http": run.config.knowledge.backend.openai_http.model_copy(update={"base_url": closed_port_url()})})
    run.config = run.config.model_copy(update={"knowledge": run.config.knowledge.model_copy(update={"backend": backend})})
    run_knowledge(run, shard="0/2")
    failure = shard_failure(output_dir(run, "0/2"), "0/2")
    assert failure is not None and failure.startswith("shard 0/2: all ") and "connection failed" in failure
    assert str(output_dir(run, "0/2")) in failure  # says which folder to delete to redo the shard

    # A shard with successes is not a failure.
    good = knowledge_run(synthetic, tmp_path / "good", server)
    run_knowledge(good, shard="1/2")
    assert shard_failure(output_dir(good, "1/2"), "1/2") is None


def test_exit_codes_and_timeouts_are_reported_with_the_log_tail(tmp_path: Path) -> None:
    commands = {
        "0/3": [sys.executable, "-c", "print('all good')"],
        "1/3": [sys.executable, "-c", "import sys; print('backend exploded'); sys.exit(3)"],
        "2/3": [sys.executable, "-c", "import time; time.sleep(60)"],
    }
    logs = {shard: tmp_path / f"{shard.replace('/', '-of-')}.log" for shard in commands}
    results = run_processes(commands, logs, timeout_s=2.0)
    described = [describe_exit(r, 2.0) for r in results]
    assert described[0] is None and (tmp_path / "0-of-3.log").read_text().strip() == "all good"
    assert described[1] is not None and described[1].startswith("shard 1/3: exit code 3") and "backend exploded" in described[1]
    assert described[2] is not None and "shard 2/3: still running after 2s, stopped" in described[2]
    assert results[2].returncode is None and results[2].wall_s < 30


def test_a_launcher_stopped_with_sigterm_stops_its_workers(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    worker = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    launcher = (
        "import sys; from pathlib import Path; from reaseq.knowledge.workers import run_processes; "
        f"run_processes({{'0/1': [sys.executable, '-c', {worker!r}]}}, {{'0/1': Path({str(tmp_path / 'w.log')!r})}})"
    )
    process = subprocess.Popen([sys.executable, "-c", launcher])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker_pid = int(pid_file.read_text())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # the worker was stopped (and reaped) by its launcher
        os.kill(worker_pid, 0)


def test_ray_backend_without_ray_is_a_clear_error(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed here; this checks the message shown when it is not")
    run = knowledge_run(synthetic, tmp_path, server)
    with pytest.raises(ConfigError, match="Ray is not installed"):
        run_sharded(run.root / "config.yaml", [], None, 2, backend="ray")
    with pytest.raises(ConfigError, match="at least 1 worker"):
        run_sharded(run.root / "config.yaml", [], None, 0)


class FakeRay:
    """Runs each task at once, in this process: enough to check how run_ray reports each shard (Ray is not installed here)."""

    def __init__(self) -> None:
        self.address: str | None = None
        self.started = False

    def is_initialized(self) -> bool:
        return self.started

    def init(self, address: str | None = None) -> None:
        self.started, self.address = True, address

    def remote(self, **options: object):
        def wrap(fn):
            class Task:
                def remote(self, *args: object) -> tuple[str, object]:
                    try:
                        return ("ok", fn(*args))
                    except Exception as exc:  # noqa: BLE001 - Ray hands a task's exception to ray.get
                        return ("error", exc)

            return Task()

        return wrap

    def get(self, ref: tuple[str, object]) -> object:
        kind, value = ref
        if kind == "error":
            raise RuntimeError(f"task raised {value!r}")
        return value


def test_ray_tasks_report_exit_codes_and_lost_tasks_per_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    commands = {
        "0/3": ["/launcher/python", "-c", "print('on the node')"],  # the node runs its own interpreter
        "1/3": ["/launcher/python", "-c", "import sys; print('no model'); sys.exit(4)"],
        "2/3": ["/launcher/python", "-c", "pass"],
    }
    logs = {shard: tmp_path / f"{shard.replace('/', '-of-')}.log" for shard in commands}
    logs["2/3"].mkdir()  # the task cannot open its log: it raises instead of exiting
    results = run_ray(commands, logs, "auto", 1.0)
    assert fake.address == "auto"
    described = [describe_exit(r, None) for r in results]
    assert described[0] is None and logs["0/3"].read_text().strip() == "on the node"
    assert described[1] is not None and described[1].startswith("shard 1/3: exit code 4") and "no model" in described[1]
    assert described[2] is not None and described[2].startswith("shard 2/3: Ray task failed") and "IsADirectoryError" in described[2]
