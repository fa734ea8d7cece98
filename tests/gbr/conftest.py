"""Small hand-made sequence datasets for the GBR tests (built in memory, no files)."""

from __future__ import annotations

import numpy as np
import pytest

from reaseq.data.dataset import SequenceData
from reaseq.gbr.config import GBRConfig

GENRES = ["Comedy", "Drama", "Horror", "Sci-Fi"]
CHAIN_LEN = 8
N_CHAINS = 5


def sequence_data(user_items: list[list[int]], n_items: int, item_genre: np.ndarray | None = None) -> SequenceData:
    """SequenceData for the given per-user item lists (time order), one genre per item (1-based into GENRES)."""
    lengths = [len(items) for items in user_items]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate([np.asarray(i, dtype=np.int64) for i in user_items]) if user_items else np.zeros(0, np.int64)
    genres = np.zeros((n_items + 1, 1), dtype=np.int64)
    if item_genre is not None:
        genres[:, 0] = item_genre
    n = len(items)
    return SequenceData(
        n_users=len(user_items), n_items=n_items, offsets=offsets, items=items, actions=np.ones(n, np.int64),
        ratings=np.full(n, np.nan, np.float32), timestamps=np.arange(n, dtype=np.int64), item_genres=genres,
        item_year=np.zeros(n_items + 1, np.int64), user_features=np.zeros((len(user_items), 0), np.int64),
        vocab={"genres": GENRES, "has_rating": False, "actions": ["click"], "user_features": {}, "year_min": 0, "year_max": 0},
    )


def chain_item(chain: int, step: int) -> int:
    """Item id of position `step` (cyclic) of a chain."""
    return 1 + chain * CHAIN_LEN + step % CHAIN_LEN


def chain_users(n_users: int, length: int, seed: int = 0) -> list[list[int]]:
    """Each user walks `length` consecutive items of one chain from a random start (no repeats while length <= CHAIN_LEN)."""
    rng = np.random.default_rng(seed)
    users = []
    for _ in range(n_users):
        chain, start = int(rng.integers(N_CHAINS)), int(rng.integers(CHAIN_LEN))
        users.append([chain_item(chain, start + j) for j in range(length)])
    return users


def chain_genres() -> np.ndarray:
    """Genre of every item: chain c gets genre 1 + c % len(GENRES) (so chain 2 is Horror, chain 3 Sci-Fi)."""
    genre = np.zeros(N_CHAINS * CHAIN_LEN + 1, np.int64)
    for chain in range(N_CHAINS):
        genre[chain_item(chain, 0) : chain_item(chain, 0) + CHAIN_LEN] = 1 + chain % len(GENRES)
    return genre


@pytest.fixture
def chains() -> SequenceData:
    """200 users, each walking 6 items of one of 5 chains of 8 items."""
    return sequence_data(chain_users(200, 6), N_CHAINS * CHAIN_LEN, chain_genres())


@pytest.fixture
def mixed_chains() -> SequenceData:
    """Users who walk 3 items of one chain and then 3 items of the chain two further (so Comedy -> Horror, Drama -> Sci-Fi)."""
    rng = np.random.default_rng(1)
    users = []
    for _ in range(240):
        chain, start = int(rng.integers(N_CHAINS)), int(rng.integers(CHAIN_LEN))
        other = (chain + 2) % N_CHAINS
        users.append([chain_item(chain, start + j) for j in range(3)] + [chain_item(other, start + j) for j in range(3)])
    return sequence_data(users, N_CHAINS * CHAIN_LEN, chain_genres())


def tiny_gbr(**fields: object) -> GBRConfig:
    """A GBR small enough to train in a second or two."""
    base: dict[str, object] = {"dim": 32, "layers": 1, "heads": 2, "dropout": 0.0, "max_len": 8, "epochs": 40, "batch_size": 32, "lr": 0.01, "k": 2, "steps": 2, "patience": 40, "valid_user_frac": 0.1, "num_threads": 1, "init": "random"}
    return GBRConfig(**{**base, **fields})
