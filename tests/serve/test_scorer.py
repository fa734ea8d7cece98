"""Loading a trained run, the serving tables, batched scoring and the atomic table store."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from reaseq.data.batches import CTRBatcher
from reaseq.errors import InputError
from reaseq.serve import (
    RefreshError,
    Scorer,
    TableStore,
    UnknownIdsError,
    build_tables,
    load_ranker,
    tables_from_data,
)


@pytest.fixture(scope="module")
def loaded(trained_run: Path) -> tuple:
    """(model, config, data, scorer) of the trained run."""
    model, cfg, data = load_ranker(trained_run)
    tables = tables_from_data(data, trained_run / "data", cfg.protocol.ctr.max_len)
    return model, cfg, data, Scorer(model, tables, "din")


def raw_ids(run: Path) -> tuple[list[str], list[str]]:
    """Raw id of each dense user id, and of each dense item id (index 0 = padding)."""
    users = pl.read_parquet(run / "data" / "users.parquet").sort("user_idx")["user_id"].to_list()
    items = pl.read_parquet(run / "data" / "items.parquet").sort("item_idx")["item_id"].to_list()
    return users, ["<pad>", *items]


def test_scores_equal_the_training_batcher_path(loaded: tuple, trained_run: Path) -> None:
    model, cfg, data, scorer = loaded
    users, items = raw_ids(trained_run)
    candidates = items[1:26]
    for u in (5, 17, 0):  # user 0 has a 2-event history (shorter than max_len)
        # The batch the training code builds for "the next event" of user u: its whole history as context.
        n = len(candidates)
        batch = CTRBatcher(data, cfg.protocol.ctr.max_len).gather(
            torch.full((n,), int(data.offsets[u + 1])), torch.full((n,), u), torch.arange(1, n + 1), torch.zeros(n)
        )
        with torch.no_grad():
            expected = torch.sigmoid(model(batch)).tolist()
        got = scorer.score(users[u], candidates)
        assert got == pytest.approx(expected, abs=1e-6)
        assert all(0.0 < s < 1.0 for s in got) and len(got) == n


def test_history_merges_stored_and_fresh_events(loaded: tuple, trained_run: Path) -> None:
    _, cfg, data, scorer = loaded
    users, items = raw_ids(trained_run)
    max_len = cfg.protocol.ctr.max_len
    stored = data.items[data.offsets[0] : data.offsets[1]]  # user 0: 2 events
    assert len(stored) == 2 < max_len
    user, hist, actions = scorer.history(users[0], [items[7], items[9]], ["5", "1"])
    assert user == 0
    assert hist.tolist() == [0] * (max_len - 4) + [*stored.tolist(), 7, 9]
    assert actions[-2:].tolist() == [scorer.tables.action_index["5"], scorer.tables.action_index["1"]]
    # More fresh events than max_len: only the most recent max_len remain.
    fresh = [items[i] for i in range(1, max_len + 6)]
    _, hist, _ = scorer.history(users[0], fresh)
    assert hist.tolist() == list(range(6, max_len + 6))


def test_fresh_history_changes_scores_and_truncates(loaded: tuple, trained_run: Path) -> None:
    _, cfg, _, scorer = loaded
    users, items = raw_ids(trained_run)
    max_len = cfg.protocol.ctr.max_len
    candidates = items[1:21]
    base = scorer.score(users[9], candidates)
    fresh = items[30 : 30 + max_len + 5]
    with_fresh = scorer.score(users[9], candidates, fresh)
    assert not np.allclose(base, with_fresh, atol=1e-6)
    # Events beyond the window are dropped: the last max_len fresh events alone give the same scores.
    assert with_fresh == pytest.approx(scorer.score(users[9], candidates, fresh[-max_len:]), abs=1e-7)
    assert not np.allclose(with_fresh, scorer.score(users[9], candidates, fresh[-3:]), atol=1e-6)


def test_unknown_user_is_cold(loaded: tuple, trained_run: Path) -> None:
    _, _, _, scorer = loaded
    users, items = raw_ids(trained_run)
    candidates = items[1:11]
    cold_a, cold_b = scorer.score("never-seen", candidates), scorer.score("also-new", candidates)
    assert cold_a == pytest.approx(cold_b, abs=1e-7)
    assert not np.allclose(cold_a, scorer.score(users[12], candidates), atol=1e-6)
    # A cold user's fresh history personalises its scores.
    assert not np.allclose(cold_a, scorer.score("never-seen", candidates, items[40:45]), atol=1e-6)


def test_unknown_ids_are_all_listed(loaded: tuple, trained_run: Path) -> None:
    _, _, _, scorer = loaded
    users, items = raw_ids(trained_run)
    with pytest.raises(UnknownIdsError) as info:
        scorer.score(users[1], [items[1], "nope", items[2], "gone", "nope"])
    assert info.value.ids == ["nope", "gone"] and info.value.field == "candidates"
    assert "nope" in str(info.value) and "Fix:" in str(info.value)
    with pytest.raises(UnknownIdsError) as info:
        scorer.score(users[1], [items[1]], ["fresh-unknown"])
    assert info.value.field == "history" and info.value.ids == ["fresh-unknown"]
    with pytest.raises(UnknownIdsError):
        scorer.score(users[1], [items[1]], [items[2]], ["not-an-action"])
    with pytest.raises(InputError, match="history_actions"):
        scorer.score(users[1], [items[1]], [items[2], items[3]], ["4"])


@pytest.mark.parametrize("one_user", [True, False])
def test_one_forward_for_all_candidates(loaded: tuple, trained_run: Path, one_user: bool) -> None:
    model, _, _, shared = loaded
    scorer = Scorer(model, shared.tables, "din", one_user=one_user)
    assert (scorer.scoring_model is scorer.model) is not one_user  # one_user: DIN's one-user factorisation (serve/one_user.py)
    users, items = raw_ids(trained_run)
    calls: list[int] = []
    handle = scorer.scoring_model.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    try:
        scorer.score(users[3], items[1:41])
    finally:
        handle.remove()
    assert calls == [40]


def test_tables_hold_the_last_max_len_events(trained_run: Path, loaded: tuple) -> None:
    _, cfg, data, scorer = loaded
    tables = scorer.tables
    max_len = cfg.protocol.ctr.max_len
    assert tables.hist_items.shape == (data.n_users + 1, max_len)
    for u in range(data.n_users):
        events = data.items[data.offsets[u] : data.offsets[u + 1]][-max_len:]
        row = tables.hist_items[u]
        assert row[max_len - len(events) :].tolist() == events.tolist() and not row[: max_len - len(events)].any()
    assert not tables.hist_items[tables.cold_user].any() and not tables.user_features[tables.cold_user].any()
    with pytest.raises(ValueError):
        tables.hist_items[0, 0] = 1  # read-only: a request can never change what others see
    assert build_tables(trained_run, max_len).version == tables.version  # the version names the content


def test_store_swaps_atomically_and_keeps_old_tables_on_failure(run_copy: Callable[[], Path], loaded: tuple) -> None:
    run = run_copy()
    _, cfg, _, _ = loaded
    max_len = cfg.protocol.ctr.max_len
    fail = threading.Event()

    def build():
        if fail.is_set():
            raise InputError("x", None, "broken on purpose", "none")
        return build_tables(run, max_len)

    store = TableStore(build)
    assert store.current is None
    first = store.refresh()
    in_flight = store.current  # what a request that started now holds
    # New interactions: user 0 gets one more event; the rebuilt tables differ, the held object does not.
    inter = pl.read_parquet(run / "data" / "interactions.parquet")
    extra = inter.filter(pl.col("user_idx") == 0).tail(1).with_columns(pl.col("timestamp") + 1, pl.lit(33, dtype=pl.Int32).alias("item_idx"))
    pl.concat([inter, extra]).sort(["user_idx", "timestamp"]).write_parquet(run / "data" / "interactions.parquet")
    second = store.refresh()
    assert store.current is second and second.version != first.version
    assert in_flight is first and in_flight.hist_items[0, -1] != 33 and second.hist_items[0, -1] == 33

    fail.set()
    with pytest.raises(RefreshError, match="broken on purpose"):
        store.refresh()
    assert store.current is second and "broken on purpose" in (store.last_error or "")


def test_load_errors_name_file_and_fix(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="config.yaml") as info:
        load_ranker(tmp_path)
    assert "reaseq train" in str(info.value)
    with pytest.raises(InputError, match="model.pt") as info:
        load_ranker(trained_run, seed=99)
    assert "reaseq train" in str(info.value)

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "train" / "seed0" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="model.pt"):
        load_ranker(run)

    tree = yaml.safe_load((trained_run / "config.yaml").read_text(encoding="utf-8"))
    tree["model"]["name"] = "popularity"
    (run / "config.yaml").write_text(yaml.safe_dump(tree), encoding="utf-8")
    with pytest.raises(InputError, match="model.name"):
        load_ranker(run)


def test_changed_item_catalogue_is_refused(run_copy: Callable[[], Path]) -> None:
    run = run_copy()
    items = pl.read_parquet(run / "data" / "items.parquet")
    items.with_columns(pl.col("year_idx").reverse()).write_parquet(run / "data" / "items.parquet")
    with pytest.raises(InputError, match="catalogue") as info:
        load_ranker(run)
    assert "reaseq train --force" in str(info.value)
