"""The two evaluation protocols: `ctr` (labelled samples, per-user time split) and `topk` (leave-one-out)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from reaseq.config import CTRProtocolConfig, TopKProtocolConfig
from reaseq.data.dataset import SequenceData
from reaseq.io import write_with

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VALID: "valid", TEST: "test"}


@dataclass
class CTRSamples:
    """One row per labelled sample; the history of a sample is everything its user did before `pos`."""

    pos: np.ndarray  # int64: row in SequenceData of the event the sample stands for
    user: np.ndarray  # int64
    item: np.ndarray  # int64 target item (the event's item, or a sampled negative)
    label: np.ndarray  # float32 0/1
    split: np.ndarray  # int8 TRAIN / VALID / TEST

    def take(self, mask: np.ndarray) -> CTRSamples:
        """The samples where mask is True."""
        return CTRSamples(self.pos[mask], self.user[mask], self.item[mask], self.label[mask], self.split[mask])

    def of(self, split: int) -> CTRSamples:
        """The samples of one split."""
        return self.take(self.split == split)

    def __len__(self) -> int:
        return len(self.pos)


def rank_in_user(data: SequenceData) -> np.ndarray:
    """For every interaction row, how many earlier interactions its user has."""
    return np.arange(len(data.items), dtype=np.int64) - np.repeat(data.offsets[:-1], np.diff(data.offsets))


def _tail_split(group: np.ndarray, valid_frac: float, test_frac: float, min_samples: int) -> np.ndarray:
    """Per group (rows sorted by group then time), mark the last test_frac as TEST and the valid_frac before as VALID."""
    _, starts, counts = np.unique(group, return_index=True, return_counts=True)
    n = np.repeat(counts, counts)
    rank = np.arange(len(group)) - np.repeat(starts, counts)
    splittable = n >= min_samples
    n_test = np.where(splittable, np.maximum(1, np.round(n * test_frac)), 0).astype(np.int64)
    n_valid = np.where(splittable, np.maximum(1, np.round(n * valid_frac)), 0).astype(np.int64)
    split = np.full(len(group), TRAIN, dtype=np.int8)
    split[rank >= n - n_test - n_valid] = VALID
    split[rank >= n - n_test] = TEST
    return split


def build_ctr_samples(data: SequenceData, cfg: CTRProtocolConfig, seed: int = 0) -> CTRSamples:
    """Labelled samples of the `ctr` protocol, split per user by time (no future event reaches train)."""
    pos = np.flatnonzero(rank_in_user(data) >= cfg.min_hist)
    user = data.users[pos]
    item = data.items[pos]
    if data.vocab["has_rating"]:
        label = (data.ratings[pos] >= cfg.label_threshold).astype(np.float32)
    else:
        # Implicit feedback: each event is a positive; negatives are sampled items shown at the same moment.
        rng = np.random.default_rng(seed)
        k = cfg.negatives_per_positive
        neg_item = rng.integers(1, data.n_items + 1, size=len(pos) * k)
        clash = neg_item == np.repeat(item, k)
        neg_item[clash] = neg_item[clash] % data.n_items + 1
        order = np.argsort(np.concatenate([pos, np.repeat(pos, k)]), kind="stable")
        pos = np.concatenate([pos, np.repeat(pos, k)])[order]
        user = np.concatenate([user, np.repeat(user, k)])[order]
        item = np.concatenate([item, neg_item])[order]
        label = np.concatenate([np.ones(len(order) // (k + 1), np.float32), np.zeros(len(neg_item), np.float32)])[order]
    # Samples of one event share a split: split by event, then spread to its negatives.
    event_first = np.concatenate([[True], pos[1:] != pos[:-1]])
    event_split = _tail_split(user[event_first], cfg.valid_frac, cfg.test_frac, cfg.min_samples_for_split)
    split = event_split[np.cumsum(event_first) - 1]
    return CTRSamples(pos.astype(np.int64), user.astype(np.int64), item.astype(np.int64), label, split)


def ctr_train_rows(data: SequenceData, samples: CTRSamples) -> np.ndarray:
    """Bool [N]: each user's events before their first validation or test sample (all events if they have none)."""
    first_held_out = data.offsets[1:].copy()
    held_out = samples.split != TRAIN
    np.minimum.at(first_held_out, samples.user[held_out], samples.pos[held_out])
    return np.arange(len(data.items)) < first_held_out[data.users]


@dataclass
class TopKSplit:
    """Leave-one-out by time: per user, the last event is test, the one before valid, the rest train."""

    data: SequenceData  # the (optionally rating-filtered) sequences the protocol uses
    users: np.ndarray  # int64 users that take part
    valid_pos: np.ndarray  # int64 row of each user's validation target
    test_pos: np.ndarray  # int64 row of each user's test target

    def train_mask(self) -> np.ndarray:
        """True for the rows a model may train on: each taking-part user's events before the valid target."""
        edges = np.zeros(len(self.data.items) + 1, dtype=np.int64)
        np.add.at(edges, self.data.offsets[self.users], 1)
        np.add.at(edges, self.valid_pos, -1)
        return np.cumsum(edges[:-1]) > 0

    def targets(self, split: int) -> np.ndarray:
        """Rows of the targets of one split (VALID or TEST)."""
        return self.valid_pos if split == VALID else self.test_pos


def build_topk_split(data: SequenceData, cfg: TopKProtocolConfig) -> TopKSplit:
    """The `topk` protocol's leave-one-out split over the full catalogue."""
    if cfg.min_rating is not None and data.vocab["has_rating"]:
        data = data.subset(data.ratings >= cfg.min_rating)
    counts = np.diff(data.offsets)
    users = np.flatnonzero(counts >= cfg.min_user_interactions).astype(np.int64)
    test_pos = data.offsets[users + 1] - 1
    return TopKSplit(data=data, users=users, valid_pos=test_pos - 1, test_pos=test_pos)


def save_ctr_samples(samples: CTRSamples, path: Path) -> None:
    """Write the samples as Parquet (atomically)."""
    frame = pl.DataFrame({"pos": samples.pos, "user_idx": samples.user, "item_idx": samples.item, "label": samples.label, "split": samples.split})
    write_with(path, lambda tmp: frame.write_parquet(tmp))


def load_ctr_samples(path: Path) -> CTRSamples:
    """Read samples written by save_ctr_samples."""
    frame = pl.read_parquet(path)
    return CTRSamples(
        frame["pos"].to_numpy().astype(np.int64), frame["user_idx"].to_numpy().astype(np.int64),
        frame["item_idx"].to_numpy().astype(np.int64), frame["label"].to_numpy().astype(np.float32),
        frame["split"].to_numpy().astype(np.int8),
    )
