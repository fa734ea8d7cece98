"""The offline table of inferred behaviours the ranker reads: K items per user with confidences, from training behaviour only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import ctr_train_rows  # noqa: F401  (re-exported: gbr callers pick training rows here)
from reaseq.errors import InputError
from reaseq.gbr.config import GBRConfig
from reaseq.gbr.infer import infer
from reaseq.gbr.model import MaskedDiffusionLM
from reaseq.gbr.train import check_rows
from reaseq.io import write_with

TABLE_SCHEMA = {"user": pl.Int64, "slot": pl.Int32, "item": pl.Int64, "confidence": pl.Float32}


def user_histories(data: SequenceData, train_rows: np.ndarray) -> list[np.ndarray]:
    """Per user (0..n_users-1), the items of their allowed rows in time order."""
    visible = data.subset(check_rows(data, train_rows))
    return np.split(visible.items, visible.offsets[1:-1])


def inferred_table(model: MaskedDiffusionLM, data: SequenceData, train_rows: np.ndarray, cfg: GBRConfig, allowed: np.ndarray | None = None) -> pl.DataFrame:
    """One row per (user, slot): the inferred item and its confidence, conditioned on the user's training rows only."""
    histories = user_histories(data, train_rows)
    items, confidence = infer(model, histories, cfg.k, cfg.steps, allowed, exclude_seen=True, temperature=cfg.temperature, remasking=cfg.remasking, batch_size=cfg.infer_batch_size, seed=cfg.seed)
    n_users, k = items.shape
    return pl.DataFrame(
        {"user": np.repeat(np.arange(n_users), k), "slot": np.tile(np.arange(k), n_users), "item": items.reshape(-1), "confidence": confidence.reshape(-1)},
        schema=TABLE_SCHEMA,
    )


def write_inferred_table(table: pl.DataFrame, path: Path) -> Path:
    """Write the table as Parquet, atomically."""
    return write_with(path, lambda tmp: table.write_parquet(tmp))


def read_inferred_table(path: Path, n_items: int | None = None) -> pl.DataFrame:
    """Read a table written by write_inferred_table, checking its columns (and item ids when n_items is given)."""
    table = pl.read_parquet(path)
    missing = [c for c in TABLE_SCHEMA if c not in table.columns]
    if missing:
        raise InputError(path, ",".join(missing), "missing columns of the inferred-behaviour table", "re-run gbr-infer to write it again")
    table = table.select([pl.col(c).cast(t) for c, t in TABLE_SCHEMA.items()])
    if n_items is not None and table.height and (table["item"].min() < 1 or table["item"].max() > n_items):
        raise InputError(path, "item", f"item ids outside 1..{n_items}", "the table belongs to another dataset preparation; re-run gbr-infer")
    return table
