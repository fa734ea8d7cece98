"""Run directories: resolved config, manifest of steps (hashes, versions, timings), logs."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from reaseq import __version__
from reaseq.config import RunConfig, dump_config
from reaseq.io import sha256_file, sha256_text, write_json, write_text

try:  # POSIX; elsewhere manifest updates are not serialised between processes (run one step at a time there)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("reaseq")

MANIFEST_LOCK = ".manifest.lock"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide results, for the manifest."""
    # Read from the installed distributions, not by importing them: a step that never needs torch (a knowledge
    # shard worker) would otherwise pay seconds of import time just to record its version.
    return {
        "reaseq": __version__,
        "python": platform.python_version(),
        "torch": metadata.version("torch"),
        "numpy": metadata.version("numpy"),
        "polars": metadata.version("polars"),
        "platform": platform.platform(),
    }


@dataclass
class StepRecord:
    """What the manifest remembers of one finished step."""

    key: str
    outputs: list[str]
    started: str = ""
    wall_s: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


class RunDir:
    """A folder holding one run's config, manifest, logs and artifacts."""

    def __init__(self, root: str | Path, config: RunConfig) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.manifest_path = self.root / "manifest.json"
        self.lock_path = self.root / MANIFEST_LOCK
        self.manifest: dict[str, Any] = self._read_manifest()
        self._input_hashes: dict[str, dict[str, str]] = {}  # step -> input file -> sha256, for the manifest
        write_text(self.root / "config.yaml", dump_config(config))
        self._attach_log()

    def _read_manifest(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            try:
                return json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                log.warning("manifest %s is unreadable; steps will be redone", self.manifest_path)
        return {"created": datetime.now(timezone.utc).isoformat(), "steps": {}}

    @contextmanager
    def _manifest_lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run's manifest (shard workers of one run finish steps concurrently)."""
        with open(self.lock_path, "a", encoding="utf-8") as handle:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _attach_log(self) -> None:
        handler = logging.FileHandler(self.root / "run.log", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root_logger = logging.getLogger("reaseq")
        # Only the run opened last logs to a file: a process running several runs keeps their logs apart.
        for existing in list(root_logger.handlers):
            if isinstance(existing, logging.FileHandler):
                root_logger.removeHandler(existing)
                existing.close()
        root_logger.addHandler(handler)

    def path(self, *parts: str) -> Path:
        """A path inside the run directory (parents created)."""
        out = self.root.joinpath(*parts)
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def step_key(self, name: str, config_section: Any, inputs: list[Path]) -> str:
        """Hash of a step's config section and input files: equal keys mean equal results."""
        hashes = {str(p.name): sha256_file(p) for p in sorted(inputs)}
        self._input_hashes[name] = hashes
        payload = json.dumps({"step": name, "config": config_section, "inputs": hashes, "version": __version__}, sort_keys=True, default=str)
        return sha256_text(payload)

    def is_done(self, name: str, key: str) -> bool:
        """True when the step finished with the same key and all its outputs still exist."""
        record = self.manifest["steps"].get(name)
        if not record or record.get("key") != key:
            return False
        return all((self.root / out).exists() for out in record.get("outputs", []))

    @contextmanager
    def step(self, name: str, key: str) -> Iterator[StepRecord]:
        """Time a step and record it in the manifest once it succeeded."""
        record = StepRecord(key=key, outputs=[], started=datetime.now(timezone.utc).isoformat())
        start = time.perf_counter()
        log.info("step %s: started", name)
        yield record
        record.wall_s = round(time.perf_counter() - start, 3)
        entry = {
            "key": record.key,
            "inputs": self._input_hashes.get(name, {}),
            "outputs": record.outputs,
            "started": record.started,
            "wall_s": record.wall_s,
            "metrics": record.metrics,
            "versions": library_versions(),
            "argv": sys.argv,
        }
        with self._manifest_lock():
            # Re-read under the lock: another process of this run (a shard worker) may have recorded a step since
            # this one read the manifest, and writing the stale copy back would erase that step.
            self.manifest = self._read_manifest()
            self.manifest["steps"][name] = entry
            write_json(self.manifest_path, self.manifest)
        log.info("step %s: finished in %.1fs", name, record.wall_s)
