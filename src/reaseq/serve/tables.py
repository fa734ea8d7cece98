"""Serving lookup tables (user histories, id maps) and the store that swaps them atomically on refresh."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Generic, TypeVar

import numpy as np
import polars as pl
import torch

from reaseq.data.batches import history_window
from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.serve.loader import DATA_DIR, load_run_data

log = logging.getLogger("reaseq")

VERSION_CHARS = 12  # enough to tell table versions apart in logs and responses


def raw_key(raw_id: object) -> str:
    """Raw ids are matched as text, so 42 and "42" name the same user or item."""
    return str(raw_id)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _digest(*parts: bytes | str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8") if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()


def catalogue_digest(data: SequenceData, item_ids: list[str]) -> str:
    """Digest of everything the ranker's weights are tied to: dense item ids, item features, feature vocabularies."""
    vocab = data.vocab
    vocabularies = repr([vocab["actions"], vocab["genres"], vocab["year_min"], vocab["year_max"], sorted(vocab["user_features"].items())])
    return _digest("\n".join(item_ids), np.ascontiguousarray(data.item_genres).tobytes(), np.ascontiguousarray(data.item_year).tobytes(), vocabularies)


@dataclass(frozen=True)
class ServingTables:
    """Everything a request needs besides the model, read-only; the last user row is the cold (unknown) user."""

    version: str
    max_len: int
    user_index: Mapping[str, int]  # raw user id -> dense user id
    item_index: Mapping[str, int]  # raw item id -> dense item id (1..n_items)
    action_index: Mapping[str, int]  # action label (rating level, behaviour type) -> action code
    hist_items: np.ndarray  # int32 [n_users + 1, max_len], the most recent events, left-padded with 0
    hist_actions: np.ndarray  # int16 [n_users + 1, max_len]
    user_features: np.ndarray  # int64 [n_users + 1, F]; the cold row is all padding codes
    catalogue: str  # catalogue_digest of the data the tables were built from
    # Optional per-user model inputs: batch key -> [n_users + 1, ...] array in the dtype the ranker takes, the cold
    # row all zeros (padding). Scorer.batch adds row `user` of each, broadcast over the candidates, under its key:
    # e.g. GBR's inferred behaviours as "inf_items" (int64 [U + 1, K], 0 = padding) and "inf_conf" (float32 [U + 1, K]).
    user_inputs: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def n_users(self) -> int:
        return len(self.user_index)

    @property
    def cold_user(self) -> int:
        """Dense id of the row used for users the tables do not know."""
        return self.n_users

    def user_row(self, user_id: object) -> int:
        """Dense id of a raw user id, or the cold row when the user is unknown."""
        return self.user_index.get(raw_key(user_id), self.cold_user)


CORE_KEYS = frozenset({"user", "item", "hist_items", "hist_actions"})  # batch keys every serving batch has


def _with_cold_row(key: str, array: np.ndarray, n_users: int) -> np.ndarray:
    """A per-user input [n_users, ...] with the cold user's all-zero (padding) row appended, read-only."""
    array = np.asarray(array)
    if key in CORE_KEYS or array.ndim < 1 or array.shape[0] != n_users:
        raise ValueError(f"user input {key!r}: expected a new batch key and one row per user ({n_users}), got shape {array.shape}")
    return _frozen(np.concatenate([array, np.zeros((1, *array.shape[1:]), dtype=array.dtype)]))


def tables_from_data(data: SequenceData, folder: Path, max_len: int, user_inputs: Mapping[str, np.ndarray] | None = None) -> ServingTables:
    """Tables from prepared data already in memory; `folder` holds its users/items Parquet files (raw ids).

    `user_inputs` are optional per-user model inputs (batch key -> array [n_users, ...] by dense user id), see
    ServingTables.user_inputs; they are part of the version.
    """
    users = pl.read_parquet(folder / "users.parquet", columns=["user_id", "user_idx"]).sort("user_idx")
    items = pl.read_parquet(folder / "items.parquet", columns=["item_id", "item_idx"]).sort("item_idx")
    user_ids = [raw_key(u) for u in users["user_id"].to_list()]
    item_ids = [raw_key(i) for i in items["item_id"].to_list()]
    if len(user_ids) != data.n_users or len(item_ids) != data.n_items:
        raise InputError(folder, "user_idx,item_idx", "users.parquet / items.parquet do not match vocab.json", "prepare the run again with `reaseq prepare --force`")

    # Each user's whole logged history ends at offsets[u + 1]; keep its last max_len events.
    ends = torch.from_numpy(data.offsets[1:])
    rows, valid = history_window(torch.from_numpy(data.offsets), torch.arange(data.n_users), ends, max_len)
    rows, valid = rows.numpy(), valid.numpy()
    hist_items = np.zeros((data.n_users + 1, max_len), dtype=np.int32)
    hist_actions = np.zeros((data.n_users + 1, max_len), dtype=np.int16)
    if len(data.items):
        hist_items[:-1] = np.where(valid, data.items[rows], 0)
        hist_actions[:-1] = np.where(valid, data.actions[rows], 0)
    user_features = np.zeros((data.n_users + 1, data.user_features.shape[1]), dtype=np.int64)
    user_features[:-1] = data.user_features

    inputs = {key: _with_cold_row(key, array, data.n_users) for key, array in sorted((user_inputs or {}).items())}
    described = [part for key, array in inputs.items() for part in (f"{key}:{array.dtype}:{array.shape}", np.ascontiguousarray(array).tobytes())]

    catalogue = catalogue_digest(data, item_ids)
    version = _digest(catalogue, "\n".join(user_ids), hist_items.tobytes(), hist_actions.tobytes(), user_features.tobytes(), *described)[:VERSION_CHARS]
    return ServingTables(
        version=version,
        max_len=max_len,
        user_index=MappingProxyType({u: i for i, u in enumerate(user_ids)}),
        item_index=MappingProxyType({item: i for i, item in enumerate(item_ids, start=1)}),
        action_index=MappingProxyType({a: i for i, a in enumerate(data.vocab["actions"], start=1)}),
        hist_items=_frozen(hist_items),
        hist_actions=_frozen(hist_actions),
        user_features=_frozen(user_features),
        catalogue=catalogue,
        user_inputs=MappingProxyType(inputs),
    )


UserInputs = Callable[[SequenceData], Mapping[str, np.ndarray]]  # reads per-user model inputs for freshly loaded data


def build_tables(run_dir: Path, max_len: int, user_inputs: UserInputs | None = None) -> ServingTables:
    """Tables from the run folder's prepared data as it is on disk now; `user_inputs(data)` adds per-user inputs."""
    try:
        data = load_run_data(run_dir)
        return tables_from_data(data, Path(run_dir) / DATA_DIR, max_len, user_inputs(data) if user_inputs is not None else None)
    except (OSError, pl.exceptions.PolarsError, KeyError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(Path(run_dir) / DATA_DIR, None, f"the prepared data cannot be read ({type(exc).__name__}: {exc})", "prepare the run again with `reaseq prepare --force`") from None


T = TypeVar("T")


class RefreshError(Exception):
    """A refresh failed; the store keeps serving what it held before."""


class TableStore(Generic[T]):
    """Holds one immutable serving object; refresh builds a new one fully, then swaps a single reference.

    Readers take `store.current` once per request and use that object throughout, so a request in flight
    keeps the tables it started with; a failed build leaves the old object in place.
    """

    def __init__(self, build: Callable[[], T], initial: T | None = None) -> None:
        self._build = build
        self._current: T | None = initial
        self._lock = threading.Lock()  # one refresh at a time; readers never take it
        self.last_error: str | None = None
        self.refreshed_at: float | None = None

    @property
    def current(self) -> T | None:
        """The object serving now (None before the first successful load)."""
        return self._current

    def refresh(self) -> T:
        """Build a new object and swap it in; on failure keep the old one and raise RefreshError."""
        with self._lock:
            try:
                fresh = self._build()
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("serving tables refresh failed, still serving the previous ones: %s", self.last_error)
                raise RefreshError(self.last_error) from exc
            self._current = fresh
            self.last_error = None
            self.refreshed_at = time.time()
            return fresh

    def clear(self) -> None:
        """Drop the current object (shutdown)."""
        with self._lock:
            self._current = None
