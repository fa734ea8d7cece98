"""Raw tables -> canonical Parquet tables with dense ids, sorted by user and time."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from reaseq.config import DatasetConfig
from reaseq.data.tables import RawTables
from reaseq.errors import InputError
from reaseq.io import write_json, write_with

log = logging.getLogger("reaseq")

PREPARED_FILES = ("interactions.parquet", "items.parquet", "users.parquet", "vocab.json")
# User attribute columns with more distinct values than this (zip codes, free text) are not ranker features.
MAX_USER_FEATURE_CARDINALITY = 200


def _check_duplicates(inter: pl.DataFrame, cfg: DatasetConfig, file: str) -> pl.DataFrame:
    dup_mask = inter.is_duplicated()
    n_dup = int(dup_mask.sum())
    if n_dup == 0:
        return inter
    if cfg.duplicates == "drop":
        log.info("dropping %d exact duplicate interaction rows", n_dup - inter.filter(dup_mask).unique().height)
        return inter.unique(maintain_order=True)
    row = int(inter.with_row_index("row").filter(dup_mask)["row"][0])
    raise InputError(
        file,
        "user_id,item_id,timestamp",
        f"{n_dup} interaction rows are exact duplicates (first at data row {row})",
        "remove them, or set `dataset.duplicates: drop` to drop repeats and keep one copy",
    )


def _k_core(inter: pl.DataFrame, min_user: int, min_item: int) -> pl.DataFrame:
    """Repeatedly drop users and items below the minimum counts until none are left."""
    while min_user > 0 or min_item > 0:
        before = inter.height
        if min_user > 0:
            inter = inter.filter(pl.len().over("user_id") >= min_user)
        if min_item > 0:
            inter = inter.filter(pl.len().over("item_id") >= min_item)
        if inter.height == before:
            break
    return inter


def _encode_list(series: pl.Series, vocab: list[str]) -> pl.Series:
    index = {value: i + 1 for i, value in enumerate(vocab)}  # 0 is padding / unknown
    return series.list.eval(pl.element().replace_strict(index, default=0, return_dtype=pl.Int32))


def prepare_tables(raw: RawTables, cfg: DatasetConfig, out_dir: Path) -> dict[str, int]:
    """Remap ids, sort by (user, time), encode features and write the canonical tables."""
    inter_file = raw.source_of("interactions")
    inter = raw.interactions.with_row_index("source_row")
    inter = _check_duplicates(inter.drop("source_row"), cfg, inter_file).with_row_index("source_row")

    unknown = inter.join(raw.items.select("item_id"), on="item_id", how="anti")
    if unknown.height:
        raise InputError(
            inter_file,
            "item_id",
            f"{unknown['item_id'].n_unique()} item ids are not in the items table "
            f"(e.g. '{unknown['item_id'][0]}' at data row {int(unknown['source_row'][0])})",
            f"add them to {raw.source_of('items')} or drop those interactions",
        )
    inter = _k_core(inter, cfg.min_user_interactions, cfg.min_item_interactions)
    if inter.height == 0:
        raise InputError(inter_file, None, "no interactions are left after the k-core filter", "lower dataset.min_user_interactions / min_item_interactions")

    # Dense ids in sorted raw-id order, so the same input always gives the same ids.
    users = pl.DataFrame({"user_id": inter["user_id"].unique().sort()}).with_row_index("user_idx")
    items = raw.items.join(inter.select("item_id").unique(), on="item_id", how="semi").sort("item_id")
    items = items.with_row_index("item_idx", offset=1)  # item 0 is padding

    has_rating = inter["rating"].null_count() < inter.height
    inter = inter.join(users, on="user_id").join(items.select("item_id", "item_idx"), on="item_id")
    # Ties in time keep the file order: the source order is the best evidence of what came first.
    inter = inter.sort(["user_idx", "timestamp", "source_row"])
    action_vocab: list[str]
    if has_rating:
        ratings = inter["rating"].fill_null(0).round(0).cast(pl.Int32)
        action_vocab = [str(v) for v in sorted(set(ratings.to_list()))]
        inter = inter.with_columns(ratings.cast(pl.Utf8).alias("_action"))
    elif "behavior" in inter.columns:
        action_vocab = sorted(inter["behavior"].drop_nulls().unique().to_list())
        inter = inter.with_columns(pl.col("behavior").alias("_action"))
    else:
        action_vocab = ["interact"]
        inter = inter.with_columns(pl.lit("interact").alias("_action"))
    action_index = {value: i + 1 for i, value in enumerate(action_vocab)}
    inter = inter.with_columns(pl.col("_action").replace_strict(action_index, default=0, return_dtype=pl.Int32).alias("action"))
    inter_out = inter.select(
        pl.col("user_idx").cast(pl.Int32),
        pl.col("item_idx").cast(pl.Int32),
        pl.col("timestamp").cast(pl.Int64),
        pl.col("rating").cast(pl.Float32),
        pl.col("action").cast(pl.Int8),
    )

    # Item features: genre list and year, encoded as small integer vocabularies.
    genre_vocab: list[str] = []
    if "genres" in items.columns:
        genre_vocab = sorted(items["genres"].explode().drop_nulls().unique().to_list())
        items = items.with_columns(_encode_list(items["genres"].fill_null([]), genre_vocab).alias("genre_idx"))
    else:
        items = items.with_columns(pl.lit([], dtype=pl.List(pl.Int32)).alias("genre_idx"))
    year_min = year_max = 0
    if "year" in items.columns and items["year"].null_count() < items.height:
        year_min, year_max = int(items["year"].min()), int(items["year"].max())
        items = items.with_columns((pl.col("year") - year_min + 1).fill_null(0).cast(pl.Int32).alias("year_idx"))
    else:
        items = items.with_columns(pl.lit(0, dtype=pl.Int32).alias("year_idx"))

    # User features: low-cardinality attribute columns only.
    user_features: dict[str, list[str]] = {}
    if raw.users is not None:
        user_attrs = raw.users.join(users, on="user_id", how="inner")
        users = users.join(user_attrs.drop("user_idx"), on="user_id", how="left")
        for column in raw.users.columns:
            if column == "user_id":
                continue
            values = users[column].cast(pl.Utf8)
            if 1 < values.n_unique() <= MAX_USER_FEATURE_CARDINALITY:
                vocab = sorted(values.drop_nulls().unique().to_list())
                user_features[column] = vocab
                index = {value: i + 1 for i, value in enumerate(vocab)}
                users = users.with_columns(values.replace_strict(index, default=0, return_dtype=pl.Int32).alias(f"{column}_idx"))
    users = users.with_columns(pl.col("user_idx").cast(pl.Int32))
    items = items.with_columns(pl.col("item_idx").cast(pl.Int32))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_with(out_dir / "interactions.parquet", lambda p: inter_out.write_parquet(p))
    write_with(out_dir / "items.parquet", lambda p: items.write_parquet(p))
    write_with(out_dir / "users.parquet", lambda p: users.write_parquet(p))
    vocab = {
        "dataset": raw.name,
        "n_users": users.height,
        "n_items": items.height,
        "has_rating": has_rating,
        "actions": action_vocab,
        "genres": genre_vocab,
        "year_min": year_min,
        "year_max": year_max,
        "user_features": user_features,
    }
    write_json(out_dir / "vocab.json", vocab)
    log.info("prepared %s: %d users, %d items, %d interactions", raw.name, users.height, items.height, inter_out.height)
    return {"users": users.height, "items": items.height, "interactions": inter_out.height}
