"""ONNX export: the exported ranker scores like the eager one on batches of any size and history length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reaseq.serve import Scorer, load_ranker, tables_from_data
from reaseq.serve.export import OnnxScorer, export_onnx, export_run
from tests.serve.conftest import train_tiny_run


def random_batch(generator: torch.Generator, n: int, length: int, n_users: int, n_items: int, n_actions: int) -> dict[str, torch.Tensor]:
    """Random users (the cold row included), items, and left-padded histories of random lengths."""
    hist = torch.randint(1, n_items + 1, (n, length), generator=generator)
    lengths = torch.randint(0, length + 1, (n,), generator=generator)
    pad = torch.arange(length).unsqueeze(0) < (length - lengths).unsqueeze(1)
    return {
        "user": torch.randint(0, n_users + 1, (n,), generator=generator),
        "item": torch.randint(1, n_items + 1, (n,), generator=generator),
        "hist_items": hist.masked_fill(pad, 0),
        "hist_actions": torch.randint(1, n_actions + 1, (n, length), generator=generator).masked_fill(pad, 0),
    }


def export_and_compare(run: Path, out: Path) -> Scorer:
    model, cfg, data = load_ranker(run)
    scorer = Scorer(model, tables_from_data(data, run / "data", cfg.protocol.ctr.max_len), "din")
    generator = torch.Generator().manual_seed(0)
    example = random_batch(generator, 3, cfg.protocol.ctr.max_len, data.n_users, data.n_items, data.n_actions)
    export_onnx(scorer.model, example, out)
    onnx_scorer = OnnxScorer(out)
    for n, length in [(1, 1), (7, cfg.protocol.ctr.max_len), (64, 23), (200, 5)]:
        batch = random_batch(generator, n, length, data.n_users, data.n_items, data.n_actions)
        eager = scorer.predict(batch).numpy()
        exported = onnx_scorer.predict(batch)
        assert exported.shape == (n,)
        np.testing.assert_allclose(exported, eager, atol=1e-5, rtol=0)
    # A real serving batch (history broadcast over candidates, a cold user) scores alike too.
    known_items = list(scorer.tables.item_index)
    serving = scorer.batch("unknown-user", known_items[:9], known_items[10:14])
    np.testing.assert_allclose(onnx_scorer.predict(serving), scorer.predict(serving).numpy(), atol=1e-5, rtol=0)
    return scorer


def test_onnx_matches_eager(trained_run: Path, tmp_path: Path) -> None:
    scorer = export_and_compare(trained_run, tmp_path / "din.onnx")
    assert not any(m.training for m in scorer.model.modules())  # exporting left the ranker in eval mode (dropout off)


@pytest.mark.parametrize("variant", [{"use_user_features": False, "use_history_ratings": False, "attention_softmax": False}, {"item_fusion": "concat", "dropout": 0.3}])
def test_onnx_matches_eager_for_model_variants(tmp_path: Path, variant: dict) -> None:
    # With dropout > 0 this also checks that exporting leaves the eager ranker in eval mode.
    run = train_tiny_run(tmp_path / "variant", **variant)
    export_and_compare(run, tmp_path / "variant.onnx")


def test_export_run_writes_a_checked_file(trained_run: Path, tmp_path: Path) -> None:
    out = export_run(trained_run, tmp_path / "exported" / "ranker.onnx")
    assert out.is_file() and out.stat().st_size > 0
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file
