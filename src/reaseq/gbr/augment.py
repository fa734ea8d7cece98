"""The offline table of inferred behaviours the ranker reads: K items per user with confidences, from training behaviour only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import CTRSamples, ctr_train_rows, rank_in_user
from reaseq.errors import InputError
from reaseq.gbr.config import GBRConfig
from reaseq.gbr.infer import infer
from reaseq.gbr.model import MaskedDiffusionLM
from reaseq.gbr.train import check_rows
from reaseq.io import write_with

# as_of: the first interaction row (of SequenceData) whose sample may read the user's inferred behaviours.
TABLE_SCHEMA = {"user": pl.Int64, "slot": pl.Int32, "item": pl.Int64, "confidence": pl.Float32, "as_of": pl.Int64}


@dataclass
class InferredBehaviours:
    """The table as dense per-user arrays, the form the ranker's batcher and the server gather from."""

    items: np.ndarray  # int64 [n_users, K], 0 = no inferred item
    confidence: np.ndarray  # float32 [n_users, K]
    as_of: np.ndarray  # int64 [n_users]: samples at rows >= as_of[user] may read the user's row

    @property
    def k(self) -> int:
        """Inferred items per user."""
        return self.items.shape[1]


def user_histories(data: SequenceData, train_rows: np.ndarray) -> list[np.ndarray]:
    """Per user (0..n_users-1), the items of their allowed rows in time order."""
    visible = data.subset(check_rows(data, train_rows))
    return np.split(visible.items, visible.offsets[1:-1])


def gbr_rows(data: SequenceData, samples: CTRSamples, as_of_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows GBR may see [N] bool, as_of [n_users]): the first `as_of_frac` of each user's ctr training events.

    The ranker reads a user's inferred behaviours only for samples at rows >= as_of, i.e. after everything GBR saw,
    so no label of a sample that uses them (training ones included) was ever shown to GBR.
    """
    train = ctr_train_rows(data, samples)
    n_train = np.bincount(data.users[train], minlength=data.n_users)
    n_seen = np.floor(n_train * as_of_frac).astype(np.int64)
    rows = train & (rank_in_user(data) < n_seen[data.users])
    return rows, data.offsets[:-1] + n_seen


def inferred_table(model: MaskedDiffusionLM, data: SequenceData, train_rows: np.ndarray, cfg: GBRConfig,
                   allowed: np.ndarray | None = None, as_of: np.ndarray | None = None) -> pl.DataFrame:
    """One row per (user, slot): the inferred item and its confidence, conditioned on the user's `train_rows` only.

    `as_of` (per user, default 0: from the first row) is stored with the rows for the ranker (see gbr_rows).
    """
    histories = user_histories(data, train_rows)
    items, confidence = infer(model, histories, cfg.k, cfg.steps, allowed, exclude_seen=True, temperature=cfg.temperature, remasking=cfg.remasking, batch_size=cfg.infer_batch_size, seed=cfg.seed, context=cfg.context)
    n_users, k = items.shape
    as_of = np.zeros(n_users, np.int64) if as_of is None else np.asarray(as_of, np.int64)
    return pl.DataFrame(
        {"user": np.repeat(np.arange(n_users), k), "slot": np.tile(np.arange(k), n_users), "item": items.reshape(-1),
         "confidence": confidence.reshape(-1), "as_of": np.repeat(as_of, k)},
        schema=TABLE_SCHEMA,
    )


def write_inferred_table(table: pl.DataFrame, path: Path) -> Path:
    """Write the table as Parquet, atomically."""
    return write_with(path, lambda tmp: table.write_parquet(tmp))


def read_inferred_table(path: Path, n_items: int | None = None) -> pl.DataFrame:
    """Read a table written by write_inferred_table, checking its columns (and item ids when n_items is given)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "the inferred-behaviour table is missing", "run `reaseq gbr` with this config (it writes <run>/gbr/inferred.parquet)")
    table = pl.read_parquet(path)
    missing = [c for c in TABLE_SCHEMA if c not in table.columns]
    if missing:
        raise InputError(path, ",".join(missing), "missing columns of the inferred-behaviour table", "re-run `reaseq gbr --force` to write it again")
    table = table.select([pl.col(c).cast(t) for c, t in TABLE_SCHEMA.items()])
    if n_items is not None and table.height and (table["item"].min() < 1 or table["item"].max() > n_items):
        raise InputError(path, "item", f"item ids outside 1..{n_items}", "the table belongs to another dataset preparation; re-run `reaseq gbr --force`")
    return table


def inferred_arrays(table: pl.DataFrame, n_users: int, source: Path | str = "inferred table") -> InferredBehaviours:
    """Dense per-user arrays of a table; users without rows get no inferred items (and as_of past every row)."""
    if table.height and (table["user"].min() < 0 or table["user"].max() >= n_users):
        raise InputError(source, "user", f"user indices outside 0..{n_users - 1}", "the table belongs to another dataset preparation; re-run `reaseq gbr --force`")
    k = int(table["slot"].max()) + 1 if table.height else 1
    items = np.zeros((n_users, k), np.int64)
    confidence = np.zeros((n_users, k), np.float32)
    as_of = np.full(n_users, np.iinfo(np.int64).max, np.int64)
    user, slot = table["user"].to_numpy(), table["slot"].to_numpy()
    items[user, slot] = table["item"].to_numpy()
    confidence[user, slot] = table["confidence"].to_numpy()
    as_of[user] = table["as_of"].to_numpy()
    return InferredBehaviours(items, confidence, as_of)


def load_inferred(path: Path, n_users: int, n_items: int) -> InferredBehaviours:
    """Read and densify the table at `path`."""
    return inferred_arrays(read_inferred_table(path, n_items), n_users, path)
