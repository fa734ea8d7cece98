"""The beyond-log protocol: disjoint users, nothing hidden reaches the corpus, set metrics."""

from __future__ import annotations

import numpy as np
import pytest

from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.gbr.beyond_log import (
    build_beyond_log,
    evaluate_lists,
    off_platform_items,
    set_metrics,
    validation_split,
)
from reaseq.gbr.config import BeyondLogConfig
from reaseq.gbr.train import train_gbr
from tests.gbr.conftest import CHAIN_LEN, tiny_gbr

OFF = ["Horror", "Sci-Fi"]  # chains 2 and 3


def test_off_platform_items_follow_any_listed_genre(mixed_chains: SequenceData) -> None:
    off = off_platform_items(mixed_chains, OFF)
    chain = (np.arange(1, mixed_chains.n_items + 1) - 1) // CHAIN_LEN
    assert not off[0]
    assert np.array_equal(off[1:], np.isin(chain, [2, 3]))
    with pytest.raises(InputError, match="off_platform_genres"):
        off_platform_items(mixed_chains, ["Western"])


def test_split_is_disjoint_and_hides_exactly_the_targets_off_platform_rows(mixed_chains: SequenceData) -> None:
    data = mixed_chains
    cfg = BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.3, seed=3)
    split = build_beyond_log(data, cfg)
    assert len(np.intersect1d(split.target_users, split.world_users)) == 0
    assert np.array_equal(np.union1d(split.target_users, split.world_users), np.arange(data.n_users))
    assert len(split.target_users) == round(0.3 * data.n_users)

    users, off_row = data.users, split.off_platform[data.items]
    is_target = np.isin(users, split.target_users)
    assert np.array_equal(split.visible_rows, ~(is_target & off_row))  # world users fully visible, targets on platform only
    for user, history, hidden in zip(split.target_users, split.histories, split.hidden):
        own = data.items[data.offsets[user] : data.offsets[user + 1]]
        assert np.array_equal(history, own[~split.off_platform[own]])
        assert np.array_equal(hidden, np.unique(own[split.off_platform[own]]))
        assert len(hidden) >= cfg.min_hidden and len(history) >= cfg.min_history
        # No hidden behaviour of this user is in the corpus the models train on.
        visible_own = data.items[data.offsets[user] : data.offsets[user + 1]][split.visible_rows[data.offsets[user] : data.offsets[user + 1]]]
        assert not np.isin(hidden, visible_own).any()
    assert not (split.visible_rows & is_target & off_row).any()

    again = build_beyond_log(data, cfg)
    assert np.array_equal(again.target_users, split.target_users)
    other = build_beyond_log(data, cfg.model_copy(update={"seed": 4}))
    assert not np.array_equal(other.target_users, split.target_users)


def test_gbr_weights_do_not_depend_on_hidden_items(mixed_chains: SequenceData) -> None:
    split = build_beyond_log(mixed_chains, BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.3))
    hidden_rows = ~split.visible_rows
    changed = SequenceData(**{**mixed_chains.__dict__, "items": mixed_chains.items.copy()})
    off_items = np.flatnonzero(split.off_platform)
    changed.items[hidden_rows] = off_items[(np.searchsorted(off_items, changed.items[hidden_rows]) + 1) % len(off_items)]
    assert (changed.items != mixed_chains.items).any()
    cfg = tiny_gbr(epochs=2, init="svd")
    first, _ = train_gbr(mixed_chains, split.visible_rows, cfg, response_items=split.off_platform)
    second, _ = train_gbr(changed, split.visible_rows, cfg, response_items=split.off_platform)
    for name, weight in first.state_dict().items():
        assert np.array_equal(weight.numpy(), second.state_dict()[name].numpy()), name


def test_users_without_both_domains_are_never_targets(mixed_chains: SequenceData) -> None:
    split = build_beyond_log(mixed_chains, BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.9))
    assert all(len(h) > 0 for h in split.hidden) and all(len(h) > 0 for h in split.histories)
    with pytest.raises(InputError, match="min_hidden"):
        build_beyond_log(mixed_chains, BeyondLogConfig(off_platform_genres=OFF, min_hidden=4))


def test_set_metrics_by_hand() -> None:
    recommended = np.array([[5, 1, 9], [2, 2, 3]])
    relevant = [np.array([1, 9, 11, 12]), np.array([2])]
    got = set_metrics(recommended, relevant, k=3)
    d = 1 / np.log2(np.arange(2, 5))
    assert got["recall@3"] == pytest.approx((2 / 3 + 1 / 1) / 2)  # hits / min(k, |relevant|); the repeated 2 counts once
    assert got["ndcg@3"] == pytest.approx(((d[1] + d[2]) / d.sum() + 1.0) / 2)
    assert got["precision@3"] == pytest.approx(3 / 6)
    perfect = set_metrics(np.array([[11, 12, 1]]), [np.array([1, 9, 11, 12])], k=3)
    assert perfect["recall@3"] == perfect["ndcg@3"] == 1.0


def test_evaluate_lists_reports_validity_against_the_candidates(mixed_chains: SequenceData) -> None:
    split = build_beyond_log(mixed_chains, BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.3, k=2))
    on_item = int(np.flatnonzero(~split.off_platform[1:])[0]) + 1
    lists = np.array([[h[0], on_item] for h in split.hidden])
    result = evaluate_lists(lists, split, k=2)
    assert result["validity"] == pytest.approx(0.5)
    assert result["recall@2"] > 0


def test_validation_split_draws_inner_targets_from_world_users_and_hides_only_theirs(mixed_chains: SequenceData) -> None:
    cfg = BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.3)
    split = build_beyond_log(mixed_chains, cfg)
    visible, inner = validation_split(mixed_chains, split, cfg, valid_user_frac=0.2)
    assert len(visible.items) == int(split.visible_rows.sum())
    assert len(inner.target_users) == round(0.2 * mixed_chains.n_users)
    assert np.isin(inner.target_users, split.world_users).all()
    for user, hidden in zip(inner.target_users, inner.hidden):
        rows = slice(visible.offsets[user], visible.offsets[user + 1])
        assert not np.isin(hidden, visible.items[rows][inner.visible_rows[rows]]).any()
