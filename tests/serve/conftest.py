"""A tiny trained DIN run on synthetic data, shared by the serving tests (trained once per session)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from reaseq import pipeline
from reaseq.config import RunConfig
from reaseq.runs import RunDir
from reaseq.serve.config import ServeConfig
from tests.conftest import tiny_overrides
from tests.synthetic import make_synthetic

# Small limits so that the 4xx tests can exceed them cheaply.
TEST_SERVE = {"max_candidates": 50, "max_history": 30, "max_id_chars": 16, "max_body_bytes": 4096}


def train_tiny_run(root: Path, **model: object) -> Path:
    """Prepare the synthetic dataset and train DIN on it for one epoch; returns the run folder."""
    torch.set_num_threads(1)
    dataset = make_synthetic(root / "synth")
    tree = tiny_overrides(dataset, root)
    tree["train"]["epochs"] = 1
    tree["model"].update(model)
    cfg = RunConfig.model_validate(tree)
    run = RunDir(cfg.run_dir, cfg)
    pipeline.prepare(run)
    pipeline.train(run)
    detach_run_logs()
    return run.root


def detach_run_logs() -> None:
    """Close the run-log file handlers a session-scoped run attached (the per-test fixture cannot see them)."""
    logger = logging.getLogger("reaseq")
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with prepared data and train/seed0/model.pt (read-only for tests: copy it to change it)."""
    return train_tiny_run(tmp_path_factory.mktemp("serve_run"))


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Callable[[], Path]:
    """Factory: a private copy of the trained run that a test may modify."""

    def _copy() -> Path:
        target = tmp_path / "run_copy"
        shutil.copytree(trained_run, target)
        return target

    return _copy


@pytest.fixture
def serve_config() -> ServeConfig:
    """Server settings with small request limits."""
    return ServeConfig(**TEST_SERVE)
