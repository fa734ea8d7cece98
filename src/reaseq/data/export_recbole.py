"""Export our exact splits as RecBole pre-split benchmark files, so peers run on identical samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from reaseq.data.batches import history_window
from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import TEST, TRAIN, VALID, CTRSamples, TopKSplit
from reaseq.io import write_with

# RecBole reads NAME.{train,valid,test}.inter when `benchmark_filename: [train, valid, test]` is set.
SPLIT_SUFFIXES = ("train", "valid", "test")


def _history_strings(data: SequenceData, user: np.ndarray, pos: np.ndarray, max_len: int) -> pl.Series:
    """Space-separated `i<id>` tokens of the max_len events before pos, oldest first (RecBole's order)."""
    rows, valid = history_window(torch.from_numpy(data.offsets), torch.from_numpy(user), torch.from_numpy(pos), max_len)
    hist = torch.from_numpy(data.items)[rows].masked_fill(~valid, 0).numpy()
    frame = pl.DataFrame({"h": hist})
    return frame.select(
        pl.col("h").arr.to_list().list.eval(pl.format("i{}", pl.element().filter(pl.element() > 0))).list.join(" ")
    )["h"]


def _write_tsv(frame: pl.DataFrame, path: Path) -> Path:
    # quote_style="never": RecBole splits on tabs and does not unquote.
    return write_with(path, lambda tmp: frame.write_csv(tmp, separator="\t", quote_style="never"))


def _item_user_files(data: SequenceData, folder: Path, name: str) -> list[Path]:
    genres = [g.replace(" ", "_") for g in data.vocab["genres"]]
    genre_tokens = [" ".join(genres[g - 1] for g in row if g > 0) for row in data.item_genres[1:].tolist()]
    year = data.item_year[1:] + data.vocab["year_min"] - 1
    items = pl.DataFrame({
        "item_id:token": [f"i{i}" for i in range(1, data.n_items + 1)],
        "genre:token_seq": genre_tokens,
        "release_year:token": [str(y) if y >= data.vocab["year_min"] and data.vocab["year_max"] else "" for y in year.tolist()],
    })
    paths = [_write_tsv(items, folder / f"{name}.item")]
    if data.user_features.shape[1]:
        columns = {"user_id:token": [f"u{u}" for u in range(data.n_users)]}
        for j, (feature, vocab) in enumerate(data.vocab["user_features"].items()):
            columns[f"{feature}:token"] = [vocab[c - 1] if c > 0 else "" for c in data.user_features[:, j].tolist()]
        paths.append(_write_tsv(pl.DataFrame(columns), folder / f"{name}.user"))
    return paths


def export_ctr(data: SequenceData, samples: CTRSamples, max_len: int, out: Path, name: str) -> list[Path]:
    """Write NAME.{train,valid,test}.inter (user, history, target, label) plus .item/.user for RecBole's DIN."""
    folder = out / name
    paths = []
    for split, suffix in zip((TRAIN, VALID, TEST), SPLIT_SUFFIXES):
        part = samples.of(split)
        frame = pl.DataFrame({
            "user_id:token": [f"u{u}" for u in part.user.tolist()],
            "item_id_list:token_seq": _history_strings(data, part.user, part.pos, max_len),
            "item_id:token": [f"i{i}" for i in part.item.tolist()],
            "label:float": part.label.astype(np.int8),
        })
        paths.append(_write_tsv(frame, folder / f"{name}.{suffix}.inter"))
    return paths + _item_user_files(data, folder, name)


def export_topk(split: TopKSplit, max_len: int, out: Path, name: str) -> list[Path]:
    """Write leave-one-out rows for RecBole's SASRec: every training prefix -> next item, one valid and one test row per user."""
    data = split.data
    folder = out / name
    train_rows = np.flatnonzero(split.train_mask())
    users_all = data.users
    has_history = train_rows > data.offsets[users_all[train_rows]]  # a user's first event has nothing to predict from
    parts = {
        "train": train_rows[has_history],
        "valid": split.valid_pos,
        "test": split.test_pos,
    }
    paths = []
    for suffix in SPLIT_SUFFIXES:
        pos = parts[suffix]
        user = users_all[pos]
        frame = pl.DataFrame({
            "user_id:token": [f"u{u}" for u in user.tolist()],
            "item_id_list:token_seq": _history_strings(data, user, pos, max_len),
            "item_id:token": [f"i{i}" for i in data.items[pos].tolist()],
        })
        paths.append(_write_tsv(frame, folder / f"{name}.{suffix}.inter"))
    return paths

