"""Synthetic datasets in RecBole atomic format and helpers shared by the tests (imported, not fixtures)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from reaseq.config import RunConfig
from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.data.loaders import load_raw
from reaseq.data.prepare import prepare_tables

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # small hand-written files
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
AGES = ["18", "25", "35", "45", "56"]
OCCUPATIONS = ["student", "engineer", "artist", "doctor"]
# Users whose sequences are short on purpose (raw index -> number of events): exercises
# min_samples_for_split, min_hist and the top-k minimum.
SHORT_USERS = {0: 2, 1: 3, 2: 4, 3: 5}


@dataclass
class Synthetic:
    """A synthetic dataset on disk and the raw events it holds (before any preparation)."""

    folder: Path
    name: str
    events: pl.DataFrame  # user_id, item_id, timestamp, rating (null when implicit), in file order
    implicit: bool


def write_atomic(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A tab-separated RecBole atomic file."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_synthetic(
    folder: Path,
    *,
    name: str = "synth",
    n_users: int = 40,
    n_events: int = 30,
    n_items: int = 60,
    implicit: bool = False,
    seed: int = 0,
    short_users: dict[int, int] | None = None,
) -> Synthetic:
    """40 users x 30 events (a few users shorter), ratings 1-5 driven by item quality, genres, years, user attributes.

    Within a user the items are distinct and the timestamps strictly increasing, so an item id identifies
    one event of its user; rows are shuffled in the file so that preparation has to sort them.
    """
    rng = np.random.default_rng(seed)
    short_users = SHORT_USERS if short_users is None else short_users
    folder.mkdir(parents=True, exist_ok=True)
    quality = rng.normal(0.0, 1.0, size=n_items)
    rows: list[tuple[str, str, int, int]] = []
    for u in range(n_users):
        length = short_users.get(u, n_events)
        items = rng.choice(n_items, size=length, replace=False)
        times = 880_000_000 + u * 1000 + np.cumsum(rng.integers(1, 5_000, size=length))
        for j, t in zip(items, times):
            rating = int(np.clip(np.round(3.0 + 1.2 * quality[j] + rng.normal(0, 0.8)), 1, 5))
            rows.append((f"user{u}", f"m{j}", int(t), rating))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    if implicit:
        write_atomic(folder / f"{name}.inter", ["user_id:token", "item_id:token", "timestamp:float"], [[u, i, t] for u, i, t, _ in rows])
    else:
        write_atomic(folder / f"{name}.inter", ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], [[u, i, r, t] for u, i, t, r in rows])
    item_rows = []
    for j in range(n_items):
        genres = rng.choice(GENRES, size=int(rng.integers(1, 4)), replace=False)
        year = "unknown" if j % 17 == 5 else str(1970 + int(rng.integers(0, 30)))
        item_rows.append([f"m{j}", f"Movie number {j}", year, " ".join(genres)])
    write_atomic(folder / f"{name}.item", ["item_id:token", "title:token_seq", "release_year:token", "genre:token_seq"], item_rows)
    user_rows = [[f"user{u}", AGES[u % len(AGES)], "MF"[u % 2], OCCUPATIONS[u % len(OCCUPATIONS)]] for u in range(n_users)]
    write_atomic(folder / f"{name}.user", ["user_id:token", "age:token", "gender:token", "occupation:token"], user_rows)
    events = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "rating": [None if implicit else float(r[3]) for r in rows],
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64},
    )
    return Synthetic(folder, name, events, implicit)


@dataclass
class Prepared:
    """A prepared dataset: the folder of canonical tables and the sequences read back from it."""

    folder: Path
    data: SequenceData

    def raw_ids(self) -> tuple[list[str], list[str]]:
        """Raw user id of every user index and raw item id of every item index (index 0 = padding)."""
        users = pl.read_parquet(self.folder / "users.parquet").sort("user_idx")
        items = pl.read_parquet(self.folder / "items.parquet").sort("item_idx")
        return users["user_id"].to_list(), ["<pad>", *items["item_id"].to_list()]


def prepare_dataset(cfg: RunConfig, out: Path) -> SequenceData:
    """Load, prepare and read back a dataset (the `prepare` step's core, without the run folder)."""
    raw = load_raw(cfg.dataset, cfg.data_cache)
    prepare_tables(raw, cfg.dataset, out)
    return load_prepared(out)
