"""The cold-start protocol: cold items never reach training (targets, histories, ID embeddings), eval masks select them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reaseq.config import RunConfig
from reaseq.data.batches import CTRBatcher
from reaseq.data.cold import cold_split, pick_cold_items, warm_rows
from reaseq.data.protocols import TEST, TRAIN, VALID, build_ctr_samples
from reaseq.errors import ConfigError
from reaseq.rank.ctr import hide_items, run_ctr, seed_everything
from reaseq.rank.models.din import build_din


def test_cold_items_are_a_seeded_share_of_the_catalogue() -> None:
    cold = pick_cold_items(200, 0.1, seed=3)
    assert len(cold) == 20 and len(np.unique(cold)) == 20 and cold.min() >= 1 and cold.max() <= 200
    np.testing.assert_array_equal(cold, pick_cold_items(200, 0.1, seed=3))
    assert not np.array_equal(cold, pick_cold_items(200, 0.1, seed=4))
    with pytest.raises(ConfigError, match="cold_item_frac"):
        pick_cold_items(200, 1.0, seed=0)


def test_cold_split_has_no_cold_target_in_train_and_keeps_eval_whole(prepared, run_config: RunConfig) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, run_config.protocol.ctr)
    split = cold_split(data, samples, 0.2, seed=1)
    kept = split.samples
    assert not split.is_cold[kept.of(TRAIN).item].any()
    assert split.is_cold[samples.of(TRAIN).item].any()  # there was something to drop
    for part in (VALID, TEST):  # evaluation samples are untouched
        np.testing.assert_array_equal(kept.of(part).pos, samples.of(part).pos)
        np.testing.assert_array_equal(kept.of(part).item, samples.of(part).item)
    test_mask = split.test_mask()
    assert test_mask.any() and np.all(kept.split[test_mask] == TEST) and split.is_cold[kept.item[test_mask]].all()
    assert np.array_equal(split.eval_mask, split.is_cold[kept.item] & (kept.split != TRAIN))
    assert np.array_equal(split.test_mask() | split.valid_mask(), split.eval_mask)


def test_cold_items_vanish_from_training_histories_and_rows(prepared, run_config: RunConfig) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, run_config.protocol.ctr)
    split = cold_split(data, samples, 0.2, seed=1)
    hidden = hide_items(data, split.cold_items)
    batch = next(CTRBatcher(hidden, 10).iterate(split.samples.of(TRAIN), 10_000))
    assert not np.isin(batch["hist_items"].numpy(), split.cold_items).any()
    full = next(CTRBatcher(data, 10).iterate(split.samples.of(TRAIN), 10_000))
    assert np.isin(full["hist_items"].numpy(), split.cold_items).any()  # the logged histories do hold them
    rows = warm_rows(data, np.ones(len(data.items), bool), split.is_cold)
    assert not split.is_cold[data.items[rows]].any() and rows.sum() == (~split.is_cold[data.items]).sum()


def test_the_id_part_never_trains_on_cold_items(prepared, run_config: RunConfig, tmp_path: Path) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, run_config.protocol.ctr)
    split = cold_split(data, samples, 0.2, seed=1)
    seed_everything(0)
    initial = build_din(data, run_config.model).item_encoder.parts["id"].embedding.weight.detach().clone()
    result = run_ctr(data, split.samples, run_config, seed=0, out_dir=tmp_path, train_hidden_items=split.cold_items, test_subsets={"cold": split.test_mask()})
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]["item_encoder.parts.id.embedding.weight"]
    cold, warm = split.cold_items, np.flatnonzero(~split.is_cold[1:]) + 1
    torch.testing.assert_close(trained[cold], initial[cold], rtol=0, atol=0)
    assert not torch.allclose(trained[warm], initial[warm])
    assert result["test_subsets"]["cold"]["metrics"]["n"] == split.test_mask().sum()
