"""Crash safety: a step killed with SIGKILL part-way leaves no corrupt artifact, and rerunning it gives the uninterrupted result.

Each step (prepare, train, knowledge, embed, gbr) runs as its own `reaseq` process and is killed once it is visibly
mid-way: a first table in its staging folder, an epoch in its log, entries in its knowledge cache, RER's alignment
under way, a GBR training round done. The processes run at the same time (their start-up is mostly imports); the references and reruns run in this process, through the same
command line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.data.prepare import PREPARED_FILES
from reaseq.io import sha256_file
from reaseq.knowledge.outputs import RECORDS_FILE
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl, write_jsonl
from reaseq.represent.step import metadata_records
from tests.conftest import tiny_overrides
from tests.knowledge.scripted_server import AgentPlayer, ScriptedServer
from tests.knowledge.test_step import knowledge_run
from tests.synthetic import make_synthetic

DATA_FILES = (*PREPARED_FILES, "ctr_samples.parquet")
TEMP_FILE = re.compile(r"^\..+\.tmp$")  # what reaseq.io.atomic_path leaves behind when killed mid-write
POLL_S = 0.005
START_TIMEOUT_S = 180.0  # the killed processes import the ranker stack first: slow on a busy machine
WRITE_DELAY_S = 0.4  # "slow disk" for prepare, which otherwise finishes in a blink on the tiny dataset
MODEL_DELAY_S = 0.05  # "slow model" for knowledge
CACHED_AT_KILL = 15  # knowledge is killed once this many model answers are cached
LONG_TRAIN = ["--set", "train.epochs=8", "--set", "train.patience=8"]  # long enough to be caught after epoch 1
# A tiny RER and GBR; the alignment and GBR get enough rounds to be caught part-way.
TINY_EMBED = [f"--set=represent.{k}" for k in ("encoder.progress=false", "align.epochs=300", "align.batch_size=16", "align.hidden=16",
                                                 "align.neighbour_k=3", "align.progress=false", "semantic_ids.levels=2", "semantic_ids.codes=4",
                                                 "semantic_ids.progress=false", "cooccurrence_dim=8", "cooccurrence_window=3")]
TINY_GBR = [f"--set=gbr.{k}" for k in ("dim=8", "layers=1", "heads=2", "max_len=12", "batch_size=32", "epochs=12", "patience=12", "k=4", "steps=2", "num_threads=1")]

# The command line with every atomic write held open for a while after its temporary file is complete and before
# the rename: the kill then lands mid-write as well as mid-step.
SLOW_WRITES = """
import sys, time
import reaseq.io as io
inner, delay = io.write_with, float(sys.argv[1])
def slow(path, writer):
    def write_then_wait(tmp):
        writer(tmp)
        time.sleep(delay)
    return inner(path, write_then_wait)
io.write_with = slow
from reaseq.cli import app
app(sys.argv[2:], prog_name="reaseq")
"""


def invoke(*args: str) -> None:
    """Run the command line in this process; it must succeed."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


def start(args: list[str], log: Path, slow_writes: bool = False) -> subprocess.Popen[bytes]:
    """Start `reaseq <args>` as its own process (stdout and stderr to `log`)."""
    prefix = ["-c", SLOW_WRITES, str(WRITE_DELAY_S)] if slow_writes else ["-m", "reaseq.cli"]
    with open(log, "wb") as sink:
        return subprocess.Popen([sys.executable, *prefix, *args], stdout=sink, stderr=subprocess.STDOUT)


def kill_when(processes: dict[str, tuple[subprocess.Popen[bytes], Callable[[], bool], Path]]) -> None:
    """SIGKILL each process as soon as its condition holds; fail if one ends or stalls first."""
    waiting = dict(processes)
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while waiting:
            for name, (process, ready, log) in list(waiting.items()):
                if ready():
                    process.send_signal(signal.SIGKILL)
                    assert process.wait() == -signal.SIGKILL, f"{name} ended before the kill:\n{log.read_text()}"
                    del waiting[name]
                elif process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode} before it was mid-way:\n{log.read_text()}")
            assert time.monotonic() < deadline, f"{sorted(waiting)} never got mid-way"
            time.sleep(POLL_S)
    finally:
        for process, _, _ in waiting.values():
            process.kill()
            process.wait()


def log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(encoding="utf-8")


def mid_write(folder: Path, first: str) -> bool:
    """True once `first` is in place in folder and the next file is being written (its temp file exists)."""
    return (folder / first).exists() and any(TEMP_FILE.match(p.name) for p in folder.iterdir())


def parse(path: Path) -> None:
    """Read a file completely the way its consumers do; raises on a truncated or corrupt file."""
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif suffix == ".jsonl":
        for line in path.read_text(encoding="utf-8").splitlines():
            json.loads(line)
    elif suffix == ".parquet":
        pl.read_parquet(path)
    elif suffix == ".pt":
        torch.load(path, weights_only=True)
    elif suffix == ".npz":
        with np.load(path) as arrays:
            for name in arrays.files:
                arrays[name]
    elif suffix == ".yaml":
        yaml.safe_load(path.read_text(encoding="utf-8"))
    elif suffix == ".png":
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and b"IEND" in data[-12:], path
    else:
        path.read_text(encoding="utf-8")


def check_artifacts(root: Path) -> list[Path]:
    """Every artifact parses, every output the manifest lists exists, every cache entry is whole; returns leftover temp files."""
    leftovers = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if TEMP_FILE.match(path.name):
            leftovers.append(path)
        elif path.name != ".manifest.lock":
            parse(path)
    for name, step in steps(root).items():
        for output in step["outputs"]:
            assert (root / output).is_file(), f"{name} lists {output}, which is missing"
    for entry in (root / "knowledge" / "cache").rglob("*.json"):
        assert json.loads(entry.read_text(encoding="utf-8"))["key"] == entry.parent.name + entry.stem
    return leftovers


def steps(root: Path) -> dict[str, Any]:
    manifest = root / "manifest.json"
    return json.loads(manifest.read_text(encoding="utf-8"))["steps"] if manifest.exists() else {}


def records(root: Path) -> list[KnowledgeRecord]:
    return read_jsonl(root / "knowledge" / RECORDS_FILE, KnowledgeRecord)


def data_hashes(root: Path) -> dict[str, str]:
    return {name: sha256_file(root / "data" / name) for name in DATA_FILES}


@dataclasses.dataclass
class Killed:
    """The three runs whose step was killed, and what the tests compare them with."""

    base: Path
    config: Path  # the tiny YAML config (run folders are given with --run-dir)
    prepare_run: Path
    earlier_hashes: dict[str, str]  # the prepare run's data before the killed redo
    earlier_manifest: bytes
    train_run: Path
    knowledge_run: Path
    embed_run: Path
    records: Path  # the knowledge records the embed step encodes
    gbr_run: Path
    server: ScriptedServer
    pace: dict[str, float]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    """Start prepare, train and knowledge as processes at once; SIGKILL each part-way."""
    base = tmp_path_factory.mktemp("crash")
    synthetic = make_synthetic(base / "synth")
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(synthetic, base)), encoding="utf-8")
    # The prepare run holds data of another setting, so the killed step is redoing finished data for the config's own.
    prepare_run = base / "prepare"
    invoke("prepare", "-c", str(config), "--run-dir", str(prepare_run), "--set", "dataset.min_user_interactions=5")
    earlier_hashes, earlier_manifest = data_hashes(prepare_run), (prepare_run / "manifest.json").read_bytes()
    player, pace = AgentPlayer(), {"delay": MODEL_DELAY_S}
    server = ScriptedServer(lambda body: dataclasses.replace(player(body), delay=pace["delay"])).start()
    knowledge = knowledge_run(synthetic, base / "knowledge", server).root
    train_run = base / "train"
    embed_run, gbr_run = base / "embed", base / "gbr"
    invoke("prepare", "-c", str(config), "--run-dir", str(embed_run))
    records_file = write_jsonl(base / "records.jsonl", metadata_records(pl.read_parquet(embed_run / "data" / "items.parquet")))

    logs = {name: base / f"{name}.log" for name in ("prepare", "train", "knowledge", "embed", "gbr")}
    processes = {
        "prepare": (
            start(["prepare", "-c", str(config), "--run-dir", str(prepare_run)], logs["prepare"], slow_writes=True),
            lambda: mid_write(prepare_run / ".data.staging", "interactions.parquet"),
        ),
        "train": (
            start(["train", "-c", str(config), "--run-dir", str(train_run), *LONG_TRAIN], logs["train"]),
            lambda: log_has(train_run / "run.log", "epoch 1:"),
        ),
        "knowledge": (
            start(["knowledge", "-c", str(knowledge / "config.yaml")], logs["knowledge"]),
            lambda: sum(1 for _ in (knowledge / "knowledge" / "cache").rglob("*.json")) >= CACHED_AT_KILL,
        ),
        "embed": (
            start(["embed", "-c", str(config), "--run-dir", str(embed_run), "--records", str(records_file), *TINY_EMBED], logs["embed"]),
            lambda: log_has(embed_run / "run.log", "collaborative vectors"),  # logged just before the alignment trains
        ),
        "gbr": (
            start(["gbr", "-c", str(config), "--run-dir", str(gbr_run), *TINY_GBR], logs["gbr"]),
            lambda: log_has(gbr_run / "run.log", "epoch 1:"),
        ),
    }
    try:
        kill_when({name: (process, ready, logs[name]) for name, (process, ready) in processes.items()})
        pace["delay"] = 0.0
        yield Killed(base, config, prepare_run, earlier_hashes, earlier_manifest, train_run, knowledge, embed_run, records_file, gbr_run, server, pace)
    finally:
        server.stop()


def test_prepare_killed_mid_way(killed: Killed) -> None:
    run = killed.prepare_run
    # Killed before its swap, while writing: the earlier data is whole and still the state the manifest records.
    assert check_artifacts(run), "the kill was meant to land mid-write (a temporary file left behind)"
    assert data_hashes(run) == killed.earlier_hashes and (run / "manifest.json").read_bytes() == killed.earlier_manifest

    reference = killed.base / "prepare_reference"
    invoke("prepare", "-c", str(killed.config), "--run-dir", str(reference))
    invoke("prepare", "-c", str(killed.config), "--run-dir", str(run))
    assert data_hashes(run) == data_hashes(reference) != killed.earlier_hashes
    assert check_artifacts(run) == [] and not (run / ".data.staging").exists()
    assert steps(run)["prepare"]["key"] == steps(reference)["prepare"]["key"]


def test_train_killed_mid_way(killed: Killed) -> None:
    run = killed.train_run
    check_artifacts(run)  # a checkpoint of an early epoch may be there: it must load
    assert "prepare" in steps(run) and "train_seed0" not in steps(run) and not (run / "metrics.json").exists()

    reference = killed.base / "train_reference"
    invoke("train", "-c", str(killed.config), "--run-dir", str(reference), *LONG_TRAIN)
    invoke("train", "-c", str(killed.config), "--run-dir", str(run), *LONG_TRAIN)
    check_artifacts(run)
    expected = json.loads((reference / "metrics.json").read_text(encoding="utf-8"))
    result = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert result["test"] == expected["test"] and result["best_epochs"] == expected["best_epochs"]


def test_knowledge_killed_mid_way(killed: Killed) -> None:
    run, server = killed.knowledge_run, killed.server
    check_artifacts(run)  # every cache entry written before the kill is whole
    assert not (run / "knowledge" / RECORDS_FILE).exists() and "knowledge" not in steps(run)

    reference = killed.base / "knowledge_reference"
    tree = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    tree["knowledge"]["cache"]["dir"] = str(reference / "cache")  # its own, empty cache
    (killed.base / "knowledge_reference.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
    sent = len(server.requests)
    invoke("knowledge", "-c", str(killed.base / "knowledge_reference.yaml"), "--run-dir", str(reference))
    calls, sent = len(server.requests) - sent, len(server.requests)

    invoke("knowledge", "-c", str(run / "config.yaml"))
    check_artifacts(run)
    assert records(run) == records(reference) and len(records(run)) == 60 and all(r.status == "ok" for r in records(run))
    # The answers cached before the kill are replayed, not asked again.
    assert 0 < len(server.requests) - sent <= calls - CACHED_AT_KILL


def test_embed_killed_mid_way(killed: Killed) -> None:
    run = killed.embed_run
    check_artifacts(run)
    assert "embed" not in steps(run) and not (run / "embed" / "knowledge.npz").exists()

    reference = killed.base / "embed_reference"
    invoke("embed", "-c", str(killed.config), "--run-dir", str(reference), "--records", str(killed.records), *TINY_EMBED)
    invoke("embed", "-c", str(killed.config), "--run-dir", str(run), "--records", str(killed.records), *TINY_EMBED)
    assert check_artifacts(run) == []
    assert steps(run)["embed"]["key"] == steps(reference)["embed"]["key"]
    ours, theirs = (np.load(r / "embed" / "knowledge.npz") for r in (run, reference))
    for name in theirs.files:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_gbr_killed_mid_way(killed: Killed) -> None:
    run = killed.gbr_run
    check_artifacts(run)
    assert "gbr" not in steps(run) and not (run / "gbr" / "inferred.parquet").exists()

    reference = killed.base / "gbr_reference"
    invoke("gbr", "-c", str(killed.config), "--run-dir", str(reference), *TINY_GBR)
    invoke("gbr", "-c", str(killed.config), "--run-dir", str(run), *TINY_GBR)
    assert check_artifacts(run) == []
    assert pl.read_parquet(run / "gbr" / "inferred.parquet").equals(pl.read_parquet(reference / "gbr" / "inferred.parquet"))
