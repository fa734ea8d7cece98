"""Prepared tables in memory: per-user sequences as flat index arrays (CSR), item and user features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl


@dataclass
class SequenceData:
    """All interactions sorted by (user, time) as flat arrays; user u owns rows offsets[u]:offsets[u+1]."""

    n_users: int
    n_items: int  # real items; ids run 1..n_items, 0 is padding
    offsets: np.ndarray  # int64 [n_users + 1]
    items: np.ndarray  # int64 [N]
    actions: np.ndarray  # int64 [N] rating level or behaviour type, 0 = padding
    ratings: np.ndarray  # float32 [N], NaN for implicit data
    timestamps: np.ndarray  # int64 [N]
    item_genres: np.ndarray  # int64 [n_items + 1, max_genres], 0-padded
    item_year: np.ndarray  # int64 [n_items + 1]
    user_features: np.ndarray  # int64 [n_users, n_user_features]
    vocab: dict

    @property
    def users(self) -> np.ndarray:
        """User index of every interaction row."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.offsets))

    @property
    def n_actions(self) -> int:
        return len(self.vocab["actions"])

    @property
    def n_genres(self) -> int:
        return len(self.vocab["genres"])

    @property
    def n_years(self) -> int:
        return self.vocab["year_max"] - self.vocab["year_min"] + 1 if self.vocab["year_max"] else 0

    @property
    def user_feature_sizes(self) -> list[int]:
        return [len(v) for v in self.vocab["user_features"].values()]

    def subset(self, keep: np.ndarray) -> SequenceData:
        """Keep the interaction rows where `keep` is True (order preserved, offsets rebuilt)."""
        counts = np.add.reduceat(keep.astype(np.int64), self.offsets[:-1]) if len(keep) else np.zeros(0, np.int64)
        counts[np.diff(self.offsets) == 0] = 0  # reduceat repeats a value for empty users
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return SequenceData(
            self.n_users, self.n_items, offsets, self.items[keep], self.actions[keep], self.ratings[keep],
            self.timestamps[keep], self.item_genres, self.item_year, self.user_features, self.vocab,
        )


def load_prepared(folder: Path) -> SequenceData:
    """Load the canonical tables written by `prepare_tables`."""
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    inter = pl.read_parquet(folder / "interactions.parquet")
    items = pl.read_parquet(folder / "items.parquet").sort("item_idx")
    users = pl.read_parquet(folder / "users.parquet").sort("user_idx")
    n_users, n_items = vocab["n_users"], vocab["n_items"]

    counts = np.bincount(inter["user_idx"].to_numpy(), minlength=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    genre_lists = items["genre_idx"].to_list()
    max_genres = max((len(g) for g in genre_lists), default=0) or 1
    item_genres = np.zeros((n_items + 1, max_genres), dtype=np.int64)
    for row, genres in enumerate(genre_lists, start=1):
        item_genres[row, : len(genres)] = genres
    item_year = np.concatenate([[0], items["year_idx"].to_numpy()]).astype(np.int64)

    names = list(vocab["user_features"])
    user_features = (
        users.select([f"{n}_idx" for n in names]).to_numpy().astype(np.int64) if names else np.zeros((n_users, 0), np.int64)
    )
    return SequenceData(
        n_users=n_users,
        n_items=n_items,
        offsets=offsets,
        items=inter["item_idx"].to_numpy().astype(np.int64),
        actions=inter["action"].to_numpy().astype(np.int64),
        ratings=inter["rating"].fill_null(float("nan")).to_numpy().astype(np.float32),
        timestamps=inter["timestamp"].to_numpy().astype(np.int64),
        item_genres=item_genres,
        item_year=item_year,
        user_features=user_features,
        vocab=vocab,
    )
