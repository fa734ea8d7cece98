"""Unmasking inference: only allowed, unseen, distinct items, confidences in (0, 1], and the quality helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reaseq.errors import InputError
from reaseq.gbr.infer import generation_quality, history_pieces, infer, quality_vs_steps, slot_tokens
from reaseq.gbr.model import PAD, MaskedDiffusionLM, mask_token
from tests.gbr.conftest import tiny_gbr

N_ITEMS = 30


@pytest.fixture
def model() -> MaskedDiffusionLM:
    torch.manual_seed(0)
    return MaskedDiffusionLM(N_ITEMS, tiny_gbr(max_len=12, k=4)).eval()


def histories() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.choice(np.arange(1, N_ITEMS + 1), size=n, replace=False) for n in (0, 1, 5, 9, 15)]


def test_slots_follow_the_most_recent_history() -> None:
    tokens, slots = slot_tokens([np.array([1, 2, 3, 4, 5]), np.array([7])], k=2, max_len=5, mask_id=99)
    assert tokens.tolist() == [[3, 4, 5, 99, 99], [7, 99, 99, PAD, PAD]]
    assert slots.tolist() == [[3, 4], [1, 2]]


def test_history_pieces_cover_the_whole_history_newest_first() -> None:
    long, empty = np.arange(1, 8), np.array([], dtype=np.int64)
    pieces, owner = history_pieces([long, empty], keep=3, context="all")
    assert [p.tolist() for p in pieces] == [[5, 6, 7], [2, 3, 4], [1], []]
    assert owner.tolist() == [0, 0, 0, 1]
    pieces, owner = history_pieces([long, empty], keep=3, context="recent")
    assert [p.tolist() for p in pieces] == [[5, 6, 7], []] and owner.tolist() == [0, 1]


@pytest.mark.parametrize("context", ["recent", "all"])
@pytest.mark.parametrize(("steps", "remasking", "temperature"), [(1, "confidence", 0.0), (2, "confidence", 0.0), (4, "confidence", 0.0), (9, "random", 0.0), (3, "confidence", 1.0)])
def test_inferred_items_are_allowed_unseen_and_distinct(model: MaskedDiffusionLM, steps: int, remasking: str, temperature: float, context: str) -> None:
    allowed = np.zeros(N_ITEMS + 1, dtype=bool)
    allowed[10:] = True
    hist = histories()
    items, confidence = infer(model, hist, k=4, steps=steps, allowed=allowed, remasking=remasking, temperature=temperature, context=context)  # type: ignore[arg-type]
    assert items.shape == confidence.shape == (len(hist), 4)
    assert allowed[items].all()
    for row, history in zip(items, hist):
        assert len(set(row.tolist())) == 4
        assert not np.isin(row, history).any()
    assert ((confidence > 0) & (confidence <= 1)).all()
    assert generation_quality(items, hist, allowed, N_ITEMS) == {"validity": 1.0, "duplicate_rate": 0.0, "novelty": 1.0}


@pytest.mark.parametrize("context", ["recent", "all"])
def test_inference_is_deterministic_and_batch_independent(model: MaskedDiffusionLM, context: str) -> None:
    hist = histories()
    whole = infer(model, hist, k=4, steps=2, context=context)  # type: ignore[arg-type]
    batched = infer(model, hist, k=4, steps=2, batch_size=2, context=context)  # type: ignore[arg-type]
    assert np.array_equal(whole[0], batched[0]) and np.allclose(whole[1], batched[1])


def test_context_all_reads_items_older_than_the_window(model: MaskedDiffusionLM) -> None:
    # 15 items and 8 history tokens per row: the oldest item only reaches the slots with context "all".
    history = np.arange(1, 16)
    changed = history.copy()
    changed[0] = 20
    for context, should_move in (("recent", False), ("all", True)):
        _, before = infer(model, [history], k=4, steps=1, exclude_seen=False, context=context)  # type: ignore[arg-type]
        _, after = infer(model, [changed], k=4, steps=1, exclude_seen=False, context=context)  # type: ignore[arg-type]
        assert np.allclose(before, after) != should_move


def test_context_all_equals_recent_when_the_history_fits(model: MaskedDiffusionLM) -> None:
    short = [h for h in histories() if len(h) <= 8]
    recent = infer(model, short, k=4, steps=2, context="recent")
    whole = infer(model, short, k=4, steps=2, context="all")
    assert np.array_equal(recent[0], whole[0]) and np.allclose(recent[1], whole[1])


def test_one_round_commits_the_most_confident_slot_first_then_the_best_distinct_item(model: MaskedDiffusionLM) -> None:
    tokens = torch.tensor([[5, 6, mask_token(N_ITEMS), mask_token(N_ITEMS)]])
    with torch.no_grad():
        logits = model(tokens)[0, 2:]  # [2 slots, V]
    logits[:, [PAD, 5, 6]] = -torch.inf  # padding and the history are never candidates
    probs = torch.softmax(logits, dim=1)
    first = int(probs.max(dim=1).values.argmax())
    other = 1 - first
    first_item = int(probs[first].argmax())
    rest = probs[other].clone()
    rest[first_item] = 0.0
    other_item = int(rest.argmax())

    items, confidence = infer(model, [np.array([5, 6])], k=2, steps=1)
    assert items[0, first] == first_item and items[0, other] == other_item
    assert confidence[0, first] == pytest.approx(float(probs[first, first_item]), rel=1e-4)
    assert confidence[0, other] == pytest.approx(float(rest[other_item] / rest.sum()), rel=1e-4)  # renormalised without the taken item


def test_without_exclusion_history_items_may_return(model: MaskedDiffusionLM) -> None:
    allowed = np.zeros(N_ITEMS + 1, dtype=bool)
    allowed[1:5] = True
    items, _ = infer(model, [np.array([1, 2, 3])], k=4, steps=2, allowed=allowed, exclude_seen=False)
    assert sorted(items[0].tolist()) == [1, 2, 3, 4]


def test_bad_requests_name_the_field(model: MaskedDiffusionLM) -> None:
    allowed = np.zeros(N_ITEMS + 1, dtype=bool)
    allowed[1:4] = True
    with pytest.raises(InputError, match="admissible"):
        infer(model, [np.array([5])], k=4, steps=2, allowed=allowed)
    with pytest.raises(InputError, match="k"):
        infer(model, [np.array([5])], k=12, steps=2)
    with pytest.raises(InputError, match="histories"):
        infer(model, [np.array([N_ITEMS + 1])], k=2, steps=2)
    with pytest.raises(InputError, match="allowed"):
        infer(model, [np.array([5])], k=2, steps=2, allowed=np.ones(5, dtype=bool))


def test_generation_quality_counts() -> None:
    items = np.array([[3, 3, 7, 0], [4, 5, 6, 8]])
    allowed = np.ones(11, dtype=bool)
    allowed[8] = False
    quality = generation_quality(items, [np.array([7]), np.array([1])], allowed, n_items=10)
    assert quality["validity"] == pytest.approx(6 / 8)  # item 0 is padding, item 8 is not allowed
    assert quality["duplicate_rate"] == pytest.approx(1 / 8)
    assert quality["novelty"] == pytest.approx(7 / 8)


def test_quality_vs_steps_reports_every_setting(model: MaskedDiffusionLM) -> None:
    hist = histories()
    rows = quality_vs_steps(model, hist, 4, [1, 4], score=lambda items: {"first_item": float(items[0, 0])})
    assert [r["steps"] for r in rows] == [1, 4]
    assert all(r["validity"] == 1.0 and r["infer_s"] >= 0 and 0 < r["mean_confidence"] <= 1 for r in rows)
