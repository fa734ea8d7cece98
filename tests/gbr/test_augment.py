"""The inferred-behaviour table the ranker reads, and the proof that no validation/test behaviour reaches GBR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from reaseq.config import CTRProtocolConfig, TopKProtocolConfig
from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import TRAIN, build_ctr_samples, build_topk_split
from reaseq.errors import InputError
from reaseq.gbr.augment import (
    ctr_train_rows,
    inferred_table,
    read_inferred_table,
    user_histories,
    write_inferred_table,
)
from reaseq.gbr.train import train_gbr
from tests.gbr.conftest import tiny_gbr


def with_items(data: SequenceData, rows: np.ndarray, seed: int = 1) -> SequenceData:
    """The same sequences with other items at `rows` (every other field shared)."""
    items = data.items.copy()
    items[rows] = np.random.default_rng(seed).integers(1, data.n_items + 1, size=len(rows))
    assert (items[rows] != data.items[rows]).any()
    return SequenceData(**{**data.__dict__, "items": items})


def test_ctr_train_rows_stop_at_the_first_held_out_sample(chains: SequenceData) -> None:
    samples = build_ctr_samples(chains, CTRProtocolConfig(min_hist=1, valid_frac=0.2, test_frac=0.2), seed=0)
    rows = ctr_train_rows(chains, samples)
    for user in range(chains.n_users):
        held = samples.pos[(samples.user == user) & (samples.split != TRAIN)]
        end = held.min() if len(held) else chains.offsets[user + 1]
        own = np.arange(chains.offsets[user], chains.offsets[user + 1])
        assert np.array_equal(rows[own], own < end)
    assert not rows[samples.pos[samples.split != TRAIN]].any()


def test_table_has_k_distinct_unseen_items_per_user(chains: SequenceData) -> None:
    cfg = tiny_gbr(epochs=3)
    rows = build_topk_split(chains, TopKProtocolConfig()).train_mask()
    model, _ = train_gbr(chains, rows, cfg)
    table = inferred_table(model, chains, rows, cfg)
    assert table.columns == ["user", "slot", "item", "confidence", "as_of"]
    assert table.height == chains.n_users * cfg.k
    assert table.group_by("user").agg(pl.col("item").n_unique())["item"].min() == cfg.k
    histories = user_histories(chains, rows)
    for user, items in table.group_by("user", maintain_order=True).agg("item").iter_rows():
        assert not np.isin(items, histories[user]).any()
    assert table["item"].is_between(1, chains.n_items).all()
    assert ((table["confidence"] > 0) & (table["confidence"] <= 1)).all()


def test_validation_and_test_behaviour_never_reaches_gbr(chains: SequenceData) -> None:
    split = build_topk_split(chains, TopKProtocolConfig())
    rows = split.train_mask()
    changed = with_items(chains, np.concatenate([split.valid_pos, split.test_pos]))
    changed_rows = build_topk_split(changed, TopKProtocolConfig()).train_mask()
    assert np.array_equal(rows, changed_rows)

    cfg = tiny_gbr(epochs=3, init="svd")
    first, _ = train_gbr(chains, rows, cfg)
    second, _ = train_gbr(changed, changed_rows, cfg)
    for name, weight in first.state_dict().items():
        assert np.array_equal(weight.numpy(), second.state_dict()[name].numpy()), name
    assert inferred_table(first, chains, rows, cfg).equals(inferred_table(second, changed, changed_rows, cfg))

    # The check can fail: changing a training row does change the model.
    leaked = with_items(chains, np.flatnonzero(rows)[:50])
    third, _ = train_gbr(leaked, rows, cfg)
    assert any(not np.array_equal(w.numpy(), third.state_dict()[n].numpy()) for n, w in first.state_dict().items())


def test_ctr_held_out_behaviour_never_reaches_gbr(chains: SequenceData) -> None:
    protocol = CTRProtocolConfig(min_hist=1, valid_frac=0.2, test_frac=0.2)
    samples = build_ctr_samples(chains, protocol, seed=0)
    rows = ctr_train_rows(chains, samples)
    changed = with_items(chains, np.flatnonzero(~rows))
    assert np.array_equal(ctr_train_rows(changed, build_ctr_samples(changed, protocol, seed=0)), rows)
    cfg = tiny_gbr(epochs=2)
    first, _ = train_gbr(chains, rows, cfg)
    second, _ = train_gbr(changed, rows, cfg)
    assert inferred_table(first, chains, rows, cfg).equals(inferred_table(second, changed, rows, cfg))


def test_table_round_trip_and_bad_files(chains: SequenceData, tmp_path: Path) -> None:
    table = pl.DataFrame({"user": [0, 0], "slot": [0, 1], "item": [3, 4], "confidence": [0.5, 0.25], "as_of": [2, 2]})
    path = write_inferred_table(table, tmp_path / "inferred.parquet")
    assert read_inferred_table(path, chains.n_items).equals(table.cast({"slot": pl.Int32, "confidence": pl.Float32}))
    table.drop("confidence").write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="confidence"):
        read_inferred_table(tmp_path / "bad.parquet")
    with pytest.raises(InputError, match="item"):
        read_inferred_table(path, n_items=3)
