"""Serving the full ReaSeq ranker: RER's tables and GBR's inferred behaviours are loaded from the run folder."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient

from reaseq import pipeline
from reaseq.config import RunConfig
from reaseq.gbr.augment import load_inferred
from reaseq.knowledge.records import write_jsonl
from reaseq.represent.step import metadata_records
from reaseq.runs import RunDir
from reaseq.serve import load_ranker
from reaseq.serve.app import create_app
from reaseq.serve.config import ServeConfig
from tests.conftest import tiny_overrides
from tests.gbr.test_step import REPRESENT, TINY_GBR
from tests.serve.conftest import detach_run_logs
from tests.synthetic import make_synthetic

USER_ROW = 3


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained with both paths: aligned knowledge + semantic IDs + the inferred-behaviour attention."""
    root = tmp_path_factory.mktemp("full_run")
    tree = tiny_overrides(make_synthetic(root / "synth"), root)
    tree["train"]["epochs"] = 1
    tree["model"].update({"knowledge": "aligned", "semantic_ids": True, "inferred": True})
    cfg = RunConfig.model_validate(tree).model_copy(update={"gbr": TINY_GBR, "represent": REPRESENT})
    run = RunDir(cfg.run_dir, cfg)
    pipeline.prepare(run)
    records = write_jsonl(run.root / "records.jsonl", metadata_records(pl.read_parquet(run.root / "data" / "items.parquet")))
    pipeline.embed(run, records)
    pipeline.gbr(run)
    pipeline.train(run)
    detach_run_logs()
    return run.root


def test_served_scores_use_the_knowledge_and_the_inferred_behaviours(full_run: Path) -> None:
    model, cfg, data = load_ranker(full_run)
    assert cfg.model.knowledge_tables == full_run / "embed" / "knowledge.npz" and cfg.model.inferred_table == full_run / "gbr" / "inferred.parquet"
    users = pl.read_parquet(full_run / "data" / "users.parquet").sort("user_idx")["user_id"].to_list()
    items = ["<pad>", *pl.read_parquet(full_run / "data" / "items.parquet").sort("item_idx")["item_id"].to_list()]
    candidates = items[1:21]
    with TestClient(create_app(full_run, ServeConfig())) as client:
        response = client.post("/score", json={"user_id": users[USER_ROW], "candidates": candidates})
        assert response.status_code == 200, response.text
        served = response.json()["scores"]

    # The same scores from the model's own forward, with the user's inferred row put in the batch by hand.
    behaviours = load_inferred(cfg.model.inferred_table, data.n_users, data.n_items)
    k = behaviours.k
    length = cfg.protocol.ctr.max_len
    own = data.items[data.offsets[USER_ROW] : data.offsets[USER_ROW + 1]][-length:]
    actions = data.actions[data.offsets[USER_ROW] : data.offsets[USER_ROW + 1]][-length:]
    hist = torch.zeros(length, dtype=torch.long)
    hist[length - len(own) :] = torch.from_numpy(own)
    acts = torch.zeros(length, dtype=torch.long)
    acts[length - len(actions) :] = torch.from_numpy(actions)
    n = len(candidates)
    batch = {
        "user": torch.full((n,), USER_ROW), "item": torch.arange(1, n + 1), "hist_items": hist.expand(n, -1), "hist_actions": acts.expand(n, -1),
        "inf_items": torch.from_numpy(behaviours.items[USER_ROW]).expand(n, k), "inf_conf": torch.from_numpy(behaviours.confidence[USER_ROW]).expand(n, k),
    }
    with torch.no_grad():
        expected = torch.sigmoid(model(batch))
        blank = torch.sigmoid(model({**batch, "inf_items": torch.zeros_like(batch["inf_items"])}))
    assert served == pytest.approx(expected.tolist(), abs=1e-5)
    assert not torch.allclose(expected, blank)  # the inferred behaviours do move the scores
