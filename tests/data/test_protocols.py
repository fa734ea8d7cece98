"""Protocols and preparation: no future event reaches a sample, splits follow the config, ids are dense."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from pydantic import ValidationError

from reaseq.config import CTRProtocolConfig, DatasetConfig, RunConfig, TopKProtocolConfig
from reaseq.data.batches import CTRBatcher
from reaseq.data.dataset import load_prepared
from reaseq.data.loaders import load_raw
from reaseq.data.prepare import prepare_tables
from reaseq.data.protocols import TEST, TRAIN, VALID, build_ctr_samples, build_topk_split, rank_in_user
from reaseq.errors import InputError

from tests.synthetic import FIXTURES, Prepared, Synthetic, make_synthetic, prepare_dataset, write_atomic


def gather_histories(data, samples, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(hist_items, hist_actions) of every sample, in sample order, through CTRBatcher."""
    batcher = CTRBatcher(data, max_len)
    batches = list(batcher.iterate(samples, batch_size=64))
    items = torch.cat([b["hist_items"] for b in batches]).numpy()
    actions = torch.cat([b["hist_actions"] for b in batches]).numpy()
    # The batches carry the samples' own columns, in order.
    assert np.array_equal(torch.cat([b["item"] for b in batches]).numpy(), samples.item)
    assert np.array_equal(torch.cat([b["user"] for b in batches]).numpy(), samples.user)
    return items, actions


def raw_events_by_user(synthetic: Synthetic) -> dict[str, list[tuple[int, str]]]:
    """Raw (timestamp, item) events of each raw user, from the generator (not from the code under test)."""
    out: dict[str, list[tuple[int, str]]] = {}
    for row in synthetic.events.iter_rows(named=True):
        out.setdefault(row["user_id"], []).append((row["timestamp"], row["item_id"]))
    return {user: sorted(events) for user, events in out.items()}


# --- ctr: THE NO-LEAK TEST --------------------------------------------------------------------


@pytest.mark.parametrize("min_hist,max_len", [(1, 50), (3, 4)])
def test_ctr_no_leak(synthetic: Synthetic, prepared, min_hist: int, max_len: int) -> None:
    prep: Prepared = prepared()
    data = prep.data
    cfg = CTRProtocolConfig(min_hist=min_hist, max_len=max_len, valid_frac=0.1, test_frac=0.1, min_samples_for_split=3)
    samples = build_ctr_samples(data, cfg)
    assert len(samples) > 0 and {TRAIN, VALID, TEST} <= set(samples.split.tolist())
    user_raw, item_raw = prep.raw_ids()
    raw = raw_events_by_user(synthetic)

    # 1. Per user, train events < valid events < test events, by position and by timestamp.
    for u in np.unique(samples.user):
        mine = samples.user == u
        parts = [samples.pos[mine & (samples.split == s)] for s in (TRAIN, VALID, TEST)]
        present = [p for p in parts if len(p)]
        for earlier, later in zip(present, present[1:]):
            assert earlier.max() < later.min()
            assert data.timestamps[earlier].max() < data.timestamps[later].min()
        assert np.all(data.users[samples.pos[mine]] == u)

    # 2. Each history holds exactly the user's raw events strictly before the sample's event (the last max_len),
    #    oldest first and left-padded; never the target event, never anything later.
    hist_items, hist_actions = gather_histories(data, samples, max_len)
    assert hist_items.shape == (len(samples), max_len)
    for i in range(len(samples)):
        pos, u = samples.pos[i], samples.user[i]
        t = data.timestamps[pos]
        target_raw = item_raw[samples.item[i]]
        events = raw[user_raw[u]]
        assert (t, target_raw) in events  # the sample stands for a real raw event of its user
        expected = [item for ts, item in events if ts < t][-max_len:]
        hist = hist_items[i]
        real = hist[hist > 0]
        assert [item_raw[j] for j in real] == expected
        assert np.all(hist[: max_len - len(real)] == 0)  # left padding
        assert target_raw not in [item_raw[j] for j in real]
        later = {item for ts, item in events if ts >= t}
        assert later.isdisjoint(item_raw[j] for j in real)
        rows = np.arange(pos - len(real), pos)
        assert np.array_equal(hist_actions[i][hist > 0], data.actions[rows])
        assert np.all(hist_actions[i][hist == 0] == 0)


@pytest.mark.parametrize("valid_frac,test_frac", [(0.1, 0.1), (0.2, 0.3)])
def test_ctr_split_fractions_and_short_users(prepared, valid_frac: float, test_frac: float) -> None:
    data = prepared().data
    cfg = CTRProtocolConfig(min_hist=1, valid_frac=valid_frac, test_frac=test_frac, min_samples_for_split=3)
    samples = build_ctr_samples(data, cfg)
    seq_len = np.diff(data.offsets)
    saw_short = saw_split = False
    for u in range(data.n_users):
        mine = samples.user == u
        n = int(mine.sum())
        assert n == max(0, seq_len[u] - 1)
        n_valid = int((mine & (samples.split == VALID)).sum())
        n_test = int((mine & (samples.split == TEST)).sum())
        if n < cfg.min_samples_for_split:
            saw_short = True
            assert n_valid == n_test == 0, f"user {u} has {n} samples, fewer than min_samples_for_split: train only"
        else:
            saw_split = True
            assert n_test >= 1 and n_valid >= 1
            assert abs(n_test - n * test_frac) <= 0.5 + 1e-9 or n_test == 1
            assert abs(n_valid - n * valid_frac) <= 0.5 + 1e-9 or n_valid == 1
            assert n - n_valid - n_test >= 1
    assert saw_short and saw_split


def test_ctr_min_hist_and_labels(synthetic: Synthetic, prepared) -> None:
    prep = prepared()
    data = prep.data
    for min_hist in (0, 1, 4):
        for threshold in (3.0, 4.0):
            samples = build_ctr_samples(data, CTRProtocolConfig(min_hist=min_hist, label_threshold=threshold))
            earlier = rank_in_user(data)
            # Every event with >= min_hist earlier events is a sample, exactly once; no other event is.
            assert np.array_equal(samples.pos, np.flatnonzero(earlier >= min_hist))
            assert np.all(samples.pos - data.offsets[samples.user] >= min_hist)
            assert np.array_equal(samples.item, data.items[samples.pos])
            # Labels from the raw ratings: rating >= threshold is positive.
            user_raw, item_raw = prep.raw_ids()
            rating = {(r["user_id"], r["item_id"]): r["rating"] for r in synthetic.events.iter_rows(named=True)}
            expected = np.array([rating[(user_raw[u], item_raw[i])] >= threshold for u, i in zip(samples.user, samples.item)], np.float32)
            assert np.array_equal(samples.label, expected)
            assert 0 < samples.label.mean() < 1


@pytest.mark.parametrize("k", [1, 3])
def test_ctr_implicit_negatives(synthetic_implicit: Synthetic, prepared, k: int) -> None:
    data = prepared(synthetic_implicit).data
    assert not data.vocab["has_rating"]
    cfg = CTRProtocolConfig(min_hist=1, max_len=8, negatives_per_positive=k)
    samples = build_ctr_samples(data, cfg, seed=3)
    events = np.flatnonzero(rank_in_user(data) >= cfg.min_hist)
    assert len(samples) == len(events) * (k + 1)
    hist_items, hist_actions = gather_histories(data, samples, cfg.max_len)
    for pos in events:
        group = np.flatnonzero(samples.pos == pos)
        assert len(group) == k + 1
        labels = samples.label[group]
        assert labels.sum() == 1
        positive = group[labels == 1][0]
        negatives = group[labels == 0]
        assert samples.item[positive] == data.items[pos]
        assert np.all(samples.item[negatives] != data.items[pos])
        assert np.all((samples.item[group] >= 1) & (samples.item[group] <= data.n_items))
        assert len(set(samples.split[group].tolist())) == 1
        assert len(set(samples.user[group].tolist())) == 1
        for j in negatives:
            assert np.array_equal(hist_items[j], hist_items[positive])
            assert np.array_equal(hist_actions[j], hist_actions[positive])
    # Splits are per user by event, so the no-leak ordering holds for the negatives too.
    for u in np.unique(samples.user):
        mine = samples.user == u
        train, valid, test = (samples.pos[mine & (samples.split == s)] for s in (TRAIN, VALID, TEST))
        if len(valid):
            assert train.max() < valid.min() and valid.max() < test.min()


# --- topk ---------------------------------------------------------------------------------------


def test_topk_leave_one_out(prepared) -> None:
    data = prepared().data
    cfg = TopKProtocolConfig(min_user_interactions=3)
    split = build_topk_split(data, cfg)
    seq_len = np.diff(data.offsets)
    assert np.array_equal(split.users, np.flatnonzero(seq_len >= 3))
    assert 0 < len(split.users) < data.n_users  # the short users (2 events) are out
    ends = data.offsets[split.users + 1]
    assert np.array_equal(split.test_pos, ends - 1)
    assert np.array_equal(split.valid_pos, ends - 2)
    assert np.all(data.timestamps[split.valid_pos] < data.timestamps[split.test_pos])
    assert np.array_equal(split.targets(VALID), split.valid_pos) and np.array_equal(split.targets(TEST), split.test_pos)
    expected = np.zeros(len(data.items), bool)
    for u, v in zip(split.users, split.valid_pos):
        expected[data.offsets[u] : v] = True
    assert np.array_equal(split.train_mask(), expected)
    # Nothing at or after a user's valid target is trained on; users outside the protocol contribute nothing.
    mask = split.train_mask()
    assert not mask[split.valid_pos].any() and not mask[split.test_pos].any()
    outside = np.setdiff1d(np.arange(data.n_users), split.users)
    assert not mask[np.isin(data.users, outside)].any()


@pytest.mark.parametrize("min_rating,min_users", [(4.0, 3), (3.0, 5), (None, 10)])
def test_topk_min_rating_and_min_user_interactions(synthetic: Synthetic, prepared, min_rating: float | None, min_users: int) -> None:
    prep = prepared()
    data = prep.data
    split = build_topk_split(data, TopKProtocolConfig(min_rating=min_rating, min_user_interactions=min_users))
    kept = data.ratings >= min_rating if min_rating is not None else np.ones(len(data.items), bool)
    filtered = split.data
    if min_rating is not None:
        assert np.all(filtered.ratings >= min_rating)
    assert len(filtered.items) == int(kept.sum())
    counts = np.bincount(data.users[kept], minlength=data.n_users)
    assert np.array_equal(np.diff(filtered.offsets), counts)
    for u in range(data.n_users):
        # The filtered sequence of each user is the original one without the low ratings, order kept.
        rows = np.arange(data.offsets[u], data.offsets[u + 1])
        assert np.array_equal(filtered.items[filtered.offsets[u] : filtered.offsets[u + 1]], data.items[rows[kept[rows]]])
    assert np.array_equal(split.users, np.flatnonzero(counts >= min_users))
    assert np.all(filtered.users[split.test_pos] == split.users)
    assert np.all(filtered.users[split.valid_pos] == split.users)
    assert np.array_equal(split.test_pos, filtered.offsets[split.users + 1] - 1)
    assert np.array_equal(split.valid_pos, split.test_pos - 1)
    if min_rating is not None:
        assert np.all(filtered.ratings[split.test_pos] >= min_rating)
        # Cross-check with the raw file: the test target is the user's latest raw event rated >= min_rating.
        user_raw, item_raw = prep.raw_ids()
        ev = synthetic.events.filter(pl.col("rating") >= min_rating).sort("timestamp")
        latest = dict(zip(*ev.group_by("user_id", maintain_order=True).agg(pl.col("item_id").last()).to_dict(as_series=False).values()))
        for u, pos in zip(split.users, split.test_pos):
            assert item_raw[filtered.items[pos]] == latest[user_raw[u]]


def test_topk_never_takes_a_target_from_another_user(tmp_path: Path) -> None:
    synthetic = make_synthetic(tmp_path / "one", n_users=3, short_users={0: 1, 1: 4})
    cfg = RunConfig.model_validate({"dataset": {"name": "synth", "loader": "recbole_atomic", "path": str(synthetic.folder)}})
    data = prepare_dataset(cfg, tmp_path / "prep")
    try:
        topk = TopKProtocolConfig(min_user_interactions=1)
    except ValidationError:
        return  # rejecting the setting is a fix too
    split = build_topk_split(data, topk)
    assert np.all(split.data.users[split.valid_pos] == split.users) and np.all(split.valid_pos >= 0)
    assert np.all(split.data.users[split.test_pos] == split.users)
    assert not split.train_mask()[split.test_pos].any()


def test_topk_min_rating_is_ignored_for_implicit_data(synthetic_implicit: Synthetic, prepared) -> None:
    data = prepared(synthetic_implicit).data
    split = build_topk_split(data, TopKProtocolConfig(min_rating=4.0))
    assert len(split.data.items) == len(data.items)


# --- prepare ------------------------------------------------------------------------------------


def test_prepare_dense_ids_and_sorted_rows(synthetic: Synthetic, prepared) -> None:
    prep = prepared()
    data = prep.data
    inter = pl.read_parquet(prep.folder / "interactions.parquet")
    items = pl.read_parquet(prep.folder / "items.parquet")
    users = pl.read_parquet(prep.folder / "users.parquet")
    assert sorted(items["item_idx"].to_list()) == list(range(1, items.height + 1))
    assert sorted(users["user_idx"].to_list()) == list(range(users.height))
    assert data.n_items == items.height == synthetic.events["item_id"].n_unique()
    assert data.n_users == users.height == 40
    assert set(inter["item_idx"].to_list()) == set(range(1, data.n_items + 1))
    assert set(inter["user_idx"].to_list()) == set(range(data.n_users))
    # Sorted by user, then time.
    key = inter.select("user_idx", "timestamp")
    assert key.equals(key.sort(["user_idx", "timestamp"]))
    # Same events as the raw file, each exactly once, with its own rating.
    user_raw, item_raw = prep.raw_ids()
    got = sorted(zip([user_raw[u] for u in inter["user_idx"]], [item_raw[i] for i in inter["item_idx"]], inter["timestamp"], inter["rating"]))
    want = sorted(zip(*(synthetic.events[c].to_list() for c in ("user_id", "item_id", "timestamp", "rating"))))
    assert got == want
    # Item and user attributes follow their ids.
    assert data.item_year.shape == (data.n_items + 1,) and data.item_year[0] == 0
    assert data.user_features.shape == (data.n_users, 3)


def test_prepare_toy_fixture(tmp_path: Path) -> None:
    """The hand-written atomic fixture: titles with spaces as ids, a repeated item row, float-typed attributes."""
    cfg = DatasetConfig(name="toy", loader="recbole_atomic", path=FIXTURES / "atomic")
    counts = prepare_tables(load_raw(cfg, tmp_path / "cache"), cfg, tmp_path / "out")
    assert counts == {"users": 2, "items": 2, "interactions": 3}
    data = load_prepared(tmp_path / "out")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet").sort("item_idx")
    assert items["item_id"].to_list() == ["Children's Hour, The (1961)", "Toy Story (1995)"]  # sorted raw ids -> 1, 2
    assert [data.items[data.offsets[u] : data.offsets[u + 1]].tolist() for u in range(2)] == [[2, 1], [2]]
    assert data.ratings.tolist() == [5.0, 3.0, 4.0]
    assert data.vocab["genres"] == ["Animation", "Children's", "Comedy", "Drama"]
    assert sorted(data.vocab["user_features"]) == ["age", "gender", "occupation"]
    assert data.item_year[1:].tolist() == [1961 - 1961 + 1, 1995 - 1961 + 1]


def test_prepare_keeps_file_order_for_ties(tmp_path: Path) -> None:
    folder = tmp_path / "ties"
    folder.mkdir()
    # User b's three events at one second, in file order z, a, m; user a's events out of time order in the file.
    write_atomic(folder / "ties.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], [
        ["b", "z", 5, 100], ["a", "m", 3, 300], ["b", "a", 2, 100], ["a", "z", 4, 200], ["b", "m", 1, 100], ["b", "a", 4, 50],
    ])
    cfg = DatasetConfig(name="ties", loader="recbole_atomic", path=folder)
    out = tmp_path / "out"
    prepare_tables(load_raw(cfg, tmp_path / "cache"), cfg, out)
    data = load_prepared(out)
    names = {1: "a", 2: "m", 3: "z"}  # items get dense ids in sorted raw-id order
    seqs = [[names[i] for i in data.items[data.offsets[u] : data.offsets[u + 1]]] for u in range(data.n_users)]
    assert seqs == [["z", "m"], ["a", "z", "a", "m"]]
    assert data.ratings.tolist() == [4, 3, 4, 5, 2, 1]


def test_prepare_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    rows = [["u1", "i1", 5, 10], ["u1", "i2", 3, 20], ["u1", "i1", 5, 10], ["u2", "i2", 4, 30]]
    inter = write_atomic(folder / "dup.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], rows)
    cfg = DatasetConfig(name="dup", loader="recbole_atomic", path=folder)
    with pytest.raises(InputError) as info:
        prepare_tables(load_raw(cfg, tmp_path / "c"), cfg, tmp_path / "out")
    assert str(inter) in str(info.value) and "duplicate" in str(info.value) and "duplicates: drop" in str(info.value)
    assert not (tmp_path / "out" / "interactions.parquet").exists()
    dropped = cfg.model_copy(update={"duplicates": "drop"})
    counts = prepare_tables(load_raw(dropped, tmp_path / "c"), dropped, tmp_path / "out")
    assert counts == {"users": 2, "items": 2, "interactions": 3}


def test_prepare_unknown_item_names_file_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "unk"
    folder.mkdir()
    inter = write_atomic(folder / "unk.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], [
        ["u1", "i1", 5, 10], ["u1", "ghost", 3, 20],
    ])
    write_atomic(folder / "unk.item", ["item_id:token", "title:token_seq"], [["i1", "One"], ["i2", "Two"]])
    cfg = DatasetConfig(name="unk", loader="recbole_atomic", path=folder)
    with pytest.raises(InputError) as info:
        prepare_tables(load_raw(cfg, tmp_path / "c"), cfg, tmp_path / "out")
    message = str(info.value)
    assert info.value.file == str(inter) and info.value.field == "item_id"
    assert "ghost" in message and "Fix:" in message


def _reference_core(events: pl.DataFrame, min_user: int, min_item: int) -> set[tuple[str, str]]:
    pairs = set(zip(events["user_id"].to_list(), events["item_id"].to_list()))
    while True:
        users: dict[str, int] = {}
        items: dict[str, int] = {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if users[u] >= min_user and items[i] >= min_item}
        if kept == pairs:
            return kept
        pairs = kept


@pytest.mark.parametrize("min_user,min_item", [(5, 0), (0, 18), (20, 16)])
def test_prepare_k_core(synthetic: Synthetic, prepared, min_user: int, min_item: int) -> None:
    prep = prepared(min_user_interactions=min_user, min_item_interactions=min_item)
    data = prep.data
    user_raw, item_raw = prep.raw_ids()
    got = {(user_raw[u], item_raw[i]) for u, i in zip(data.users, data.items)}
    expected = _reference_core(synthetic.events, min_user, min_item)
    assert got == expected
    assert len(got) < synthetic.events.height  # the filter removed something
    assert np.diff(data.offsets).min() >= max(min_user, 1)
    assert np.bincount(data.items, minlength=data.n_items + 1)[1:].min() >= max(min_item, 1)
    # Ids stay dense after filtering.
    assert data.n_users == len({u for u, _ in expected}) and data.n_items == len({i for _, i in expected})


def test_prepare_k_core_repeats_until_stable(tmp_path: Path) -> None:
    # Dropping d (1 event) leaves i3, i4 with one user each; dropping them leaves c with a single event: c goes too.
    folder = tmp_path / "core"
    folder.mkdir()
    rows = [["a", "i1", 1], ["a", "i2", 2], ["b", "i1", 3], ["b", "i2", 4], ["c", "i3", 5], ["c", "i4", 6], ["c", "i1", 7], ["d", "i4", 8]]
    write_atomic(folder / "core.inter", ["user_id:token", "item_id:token", "timestamp:float"], rows)
    cfg = DatasetConfig(name="core", loader="recbole_atomic", path=folder, min_user_interactions=2, min_item_interactions=2)
    counts = prepare_tables(load_raw(cfg, tmp_path / "c"), cfg, tmp_path / "out")
    assert counts == {"users": 2, "items": 2, "interactions": 4}


def test_prepare_k_core_that_removes_everything_is_an_input_error(synthetic: Synthetic, prepared) -> None:
    with pytest.raises(InputError, match="k-core"):
        prepared(min_user_interactions=1000)
