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
from pathlib import Path
from typing import Any

from reaseq import __version__
from reaseq.config import RunConfig, dump_config
from reaseq.io import sha256_file, sha256_text, write_json, write_text

log = logging.getLogger("reaseq")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide results, for the manifest."""
    import numpy
    import polars
    import torch

    return {
        "reaseq": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "polars": polars.__version__,
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
        self.manifest["steps"][name] = {
            "key": record.key,
            "inputs": self._input_hashes.get(name, {}),
            "outputs": record.outputs,
            "started": record.started,
            "wall_s": record.wall_s,
            "metrics": record.metrics,
            "versions": library_versions(),
            "argv": sys.argv,
        }
        write_json(self.manifest_path, self.manifest)
        log.info("step %s: finished in %.1fs", name, record.wall_s)
