"""Row keys: a cached (row, seed) result is reused only for the settings and inputs it was made with."""

from __future__ import annotations

import json
from pathlib import Path

from reaseq.ablate import is_cached, row_key
from reaseq.config import RunConfig
from reaseq.runs import RunDir


def _with_steps(run: RunDir, **keys: str) -> RunDir:
    run.manifest["steps"] = {name: {"key": key, "outputs": []} for name, key in keys.items()}
    return run


def test_row_key_follows_the_knowledge_tables_and_settings_but_not_the_device(run_config: RunConfig) -> None:
    run = _with_steps(RunDir(run_config.run_dir, run_config), prepare="data-1", embed_llm="llm-v1")
    key = row_key(run, run.config, [5, 100], "embed_llm")
    on_gpu = run.config.model_copy(update={"train": run.config.train.model_copy(update={"device": "cuda", "num_threads": 8})})
    assert row_key(run, on_gpu, [5, 100], "embed_llm") == key
    assert row_key(run, run.config, [5, 50], "embed_llm") != key  # other test subsets
    other_lr = run.config.model_copy(update={"train": run.config.train.model_copy(update={"lr": run.config.train.lr * 2})})
    assert row_key(run, other_lr, [5, 100], "embed_llm") != key
    # New knowledge records give the embed step a new key: rows on its tables are retrained, the din row is not.
    din_key = row_key(run, run.config, [5, 100], None)
    regenerated = _with_steps(run, prepare="data-1", embed_llm="llm-v2")
    assert row_key(regenerated, run.config, [5, 100], "embed_llm") != key
    assert row_key(regenerated, run.config, [5, 100], None) == din_key


def test_only_a_result_of_the_same_key_is_cached(tmp_path: Path) -> None:
    path = tmp_path / "din_seed0.json"
    assert not is_cached(path, "k1")
    path.write_text(json.dumps({"test": {}}))  # written before results were keyed
    assert not is_cached(path, "k1")
    path.write_text(json.dumps({"row_key": "k1"}))
    assert is_cached(path, "k1") and not is_cached(path, "k2")
