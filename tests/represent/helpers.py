"""Tiny hand-built SequenceData and vector sets for the represent tests."""

from __future__ import annotations

import numpy as np

from reaseq.data.dataset import SequenceData


def sequence_data(sequences: list[list[int]], n_items: int) -> SequenceData:
    """SequenceData whose user u consumed `sequences[u]` in that order (items 1..n_items)."""
    lengths = [len(s) for s in sequences]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.array([i for s in sequences for i in s], np.int64)
    n = len(items)
    return SequenceData(
        n_users=len(sequences),
        n_items=n_items,
        offsets=offsets,
        items=items,
        actions=np.ones(n, np.int64),
        ratings=np.full(n, np.nan, np.float32),
        timestamps=np.arange(n, dtype=np.int64),
        item_genres=np.zeros((n_items + 1, 1), np.int64),
        item_year=np.zeros(n_items + 1, np.int64),
        user_features=np.zeros((len(sequences), 0), np.int64),
        vocab={"actions": ["<pad>", "click"], "genres": [], "year_min": 0, "year_max": 0, "user_features": {}, "has_rating": False},
    )


def grouped_sequences(n_users: int, n_groups: int, items_per_group: int, length: int, seed: int) -> list[list[int]]:
    """Each user stays inside one group of items (group g owns items g*items_per_group+1 ...)."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(n_users):
        group = u % n_groups
        members = np.arange(group * items_per_group + 1, (group + 1) * items_per_group + 1)
        out.append(rng.choice(members, size=length, replace=False).tolist())
    return out


def clustered_vectors(n: int, dim: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    """float32 [n, dim]: points around `n_clusters` random centres, so nearest neighbours are meaningful."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    return (centres[rng.integers(0, n_clusters, size=n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)
