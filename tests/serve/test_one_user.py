"""The one-user forward (the user's history encoded once per request) scores like the ranker's own forward,
and the scorer falls back to that forward whenever the factorisation does not apply or disagrees."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from reaseq.rank.models.din import build_din
from reaseq.serve import Scorer, load_ranker, tables_from_data
from reaseq.serve.one_user import OneUserForward, one_user_forward
from tests.rank.test_knowledge_parts import cfg as knowledge_cfg
from tests.rank.test_knowledge_parts import make_tables, tiny_data

ATOL = 1e-6  # logits and probabilities; the two paths differ by float rounding only (~1e-7)


@pytest.fixture(scope="module")
def loaded(trained_run: Path) -> tuple:
    """(model, config, data, tables) of the shared trained run."""
    model, cfg, data = load_ranker(trained_run)
    return model, cfg, data, tables_from_data(data, trained_run / "data", cfg.protocol.ctr.max_len)


@pytest.fixture(scope="module")
def ids(trained_run: Path) -> tuple[list[str], list[str]]:
    """Raw user ids by dense id, and raw item ids by dense id (index 0 = padding)."""
    users = pl.read_parquet(trained_run / "data" / "users.parquet").sort("user_idx")["user_id"].to_list()
    items = pl.read_parquet(trained_run / "data" / "items.parquet").sort("item_idx")["item_id"].to_list()
    return users, ["<pad>", *items]


def requests(ids: tuple[list[str], list[str]], max_len: int) -> list[tuple]:
    """(user, candidates, fresh history, fresh actions): long and 2-event histories, cold users, fresh events."""
    users, items = ids
    return [
        (users[5], items[1:41], None, None),
        (users[0], items[1:26], None, None),  # a 2-event history: most positions are padding
        ("never-seen", items[1:11], None, None),  # cold: no history at all
        ("never-seen", items[1:11], items[30:33], ["5", "1", "3"]),
        (users[9], items[7:8], items[20 : 20 + max_len + 3], None),  # one candidate, history over the window
    ]


def assert_paths_agree(scorer: Scorer, cases: list[tuple]) -> None:
    reference = Scorer(scorer.model, scorer.tables, scorer.name, one_user=False)
    for user, candidates, fresh, actions in cases:
        batch = scorer.batch(user, candidates, fresh, actions)
        with torch.inference_mode():
            torch.testing.assert_close(scorer.scoring_model(batch), scorer.model(batch), atol=ATOL, rtol=0)
        assert scorer.score(user, candidates, fresh, actions) == pytest.approx(reference.score(user, candidates, fresh, actions), abs=ATOL)


def test_scorer_uses_the_one_user_forward_and_it_matches_the_model(loaded: tuple, ids: tuple) -> None:
    model, cfg, _, tables = loaded
    scorer = Scorer(model, tables, "din")
    assert isinstance(scorer.scoring_model, OneUserForward)
    assert_paths_agree(scorer, requests(ids, cfg.protocol.ctr.max_len))


@pytest.mark.parametrize(
    "variant",
    [{"use_user_features": False}, {"use_history_ratings": False}, {"attention_softmax": False}, {"item_fusion": "concat"}, {"use_item_features": False}],
)
def test_one_user_forward_matches_model_variants(loaded: tuple, ids: tuple, variant: dict) -> None:
    _, cfg, data, tables = loaded
    torch.manual_seed(0)
    model = build_din(data, cfg.model.model_copy(update=variant)).eval()  # untrained weights are enough to compare two paths
    scorer = Scorer(model, tables, "din")
    assert isinstance(scorer.scoring_model, OneUserForward)
    assert_paths_agree(scorer, requests(ids, cfg.protocol.ctr.max_len))


@pytest.mark.parametrize("parts", [{"knowledge": "aligned", "semantic_ids": True}, {"knowledge": "text"}, {"knowledge": "kar", "semantic_ids": True}])
def test_one_user_forward_matches_model_with_knowledge_parts(parts: dict) -> None:
    data = tiny_data()
    model = build_din(data, knowledge_cfg(**parts), make_tables()).eval()
    for history in ([3, 0, 7, 12, 5], [0, 0, 0, 0, 0], [0, 0, 0, 4, 11]):
        hist = torch.tensor(history).unsqueeze(0).expand(6, -1)
        batch = {"user": torch.zeros(6, dtype=torch.long), "item": torch.tensor([1, 2, 4, 5, 11, 12]), "hist_items": hist, "hist_actions": (hist > 0).long()}
        with torch.inference_mode():
            torch.testing.assert_close(model.forward_one_user(batch), model(batch), atol=ATOL, rtol=0)
        assert isinstance(one_user_forward(model, [batch]), OneUserForward)


def test_falls_back_to_the_model_when_the_one_user_path_disagrees(loaded: tuple, ids: tuple, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model, _, _, tables = loaded
    users, items = ids
    expected = Scorer(model, tables, "din", one_user=False).score(users[5], items[1:11])
    # A one-user path that scores differently (here: one that ignores the history) must never serve.
    monkeypatch.setattr(type(model), "forward_one_user", lambda self, batch: self.score(batch["item"], batch["hist_items"][:1] * 0, batch["hist_actions"][:1], batch["user"][:1]))
    with caplog.at_level(logging.WARNING, logger="reaseq"):
        scorer = Scorer(model, tables, "din")
    assert scorer.scoring_model is scorer.model and "disagrees" in caplog.text
    assert scorer.score(users[5], items[1:11]) == pytest.approx(expected, abs=ATOL)
    # One that fails on the ranker is left out the same way.
    monkeypatch.setattr(type(model), "forward_one_user", lambda self, batch: self.renamed_part(batch))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reaseq"):
        scorer = Scorer(model, tables, "din")
    assert scorer.scoring_model is scorer.model and "does not fit" in caplog.text
    assert one_user_forward(nn.Linear(2, 1), []) is None  # a ranker without a one-user path


def test_per_user_inputs_join_the_batch_and_the_version(loaded: tuple, ids: tuple, trained_run: Path) -> None:
    model, cfg, data, tables = loaded
    users, items = ids
    rng = np.random.default_rng(0)
    inferred = rng.integers(0, data.n_items + 1, size=(data.n_users, 3)).astype(np.int64)
    confidence = rng.random((data.n_users, 3)).astype(np.float32)
    # GBR's inferred behaviours as the lead's hook will pass them: batch key -> [n_users, K] by dense user id.
    extended = tables_from_data(data, trained_run / "data", cfg.protocol.ctr.max_len, {"inf_items": inferred, "inf_conf": confidence})
    assert extended.version != tables.version and set(extended.user_inputs) == {"inf_items", "inf_conf"}
    assert extended.user_inputs["inf_items"].shape == (data.n_users + 1, 3) and not extended.user_inputs["inf_items"][extended.cold_user].any()
    with pytest.raises(ValueError):
        extended.user_inputs["inf_conf"][0, 0] = 1.0  # read-only like the other tables
    scorer = Scorer(model, extended, "din")
    batch = scorer.batch(users[4], items[1:6])
    assert batch["inf_items"].shape == (5, 3) and batch["inf_items"].dtype == torch.int64 and batch["inf_conf"].dtype == torch.float32
    assert (batch["inf_items"] == torch.from_numpy(inferred[4])).all() and (batch["inf_conf"] == torch.from_numpy(confidence[4])).all()
    cold = scorer.batch("never-seen", items[1:3])
    assert not cold["inf_items"].any() and not cold["inf_conf"].any()
    # A ranker that reads inferred behaviours scores them on the one-user path too, like its own forward.
    torch.manual_seed(0)
    dual = build_din(data, cfg.model.model_copy(update={"inferred": True})).eval()
    scorer = Scorer(dual, extended, "din")
    assert isinstance(scorer.scoring_model, OneUserForward)
    for user, candidates, fresh, actions in requests(ids, cfg.protocol.ctr.max_len):
        with torch.inference_mode():
            batch = scorer.batch(user, candidates, fresh, actions)
            torch.testing.assert_close(scorer.scoring_model(batch), scorer.model(batch), atol=ATOL, rtol=0)
    assert len(scorer.score(users[4], items[1:6])) == 5
    for bad in ({"hist_items": inferred}, {"inf_items": inferred[:-1]}):
        with pytest.raises(ValueError, match="user input"):
            tables_from_data(data, trained_run / "data", cfg.protocol.ctr.max_len, bad)
