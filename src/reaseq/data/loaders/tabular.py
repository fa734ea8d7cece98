"""Generic CSV/TSV/Parquet files with a column mapping from the config (`dataset.columns`).

`dataset.columns` maps canonical names to source columns, e.g. {user_id: uid, timestamp: ts}. A key
prefixed with `items.` (e.g. `items.item_id: id`) applies to the items file only; an unprefixed key
applies to both files. Unmapped columns keep their names and are carried along as attributes.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from reaseq.config import DatasetConfig
from reaseq.data.loaders.reading import items_from_interactions, missing_column, null_ratings, parse_numbers, polars_error, read_table, require_file, split_list
from reaseq.data.tables import RawTables
from reaseq.errors import ConfigError, InputError

CSV_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_QUOTE = '"'  # generic CSV may quote values that contain the separator
GENRE_SEPARATOR = "|"  # genres given as one text value, MovieLens style: "Action|Comedy"
ITEMS_KEY_PREFIX = "items."
INTERACTION_REQUIRED = ("user_id", "item_id", "timestamp")
INTERACTION_OPTIONAL = ("rating", "behavior")
ITEM_REQUIRED = ("item_id", "title")
ITEM_OPTIONAL = ("year", "genres", "description")
TIMESTAMP_FIX = "use Unix seconds, or set dataset.timestamp_format to the strptime format of the text (e.g. '%Y-%m-%d %H:%M:%S')"


def read_any(path: Path, n_rows: int | None = None) -> tuple[pl.DataFrame, int | None]:
    """Read a CSV/TSV (all text) or Parquet file; also return the line number of its first data row."""
    require_file(path, "data", "check dataset.path and the file names in dataset.interactions / dataset.items")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        try:
            df = pl.read_parquet(path, n_rows=n_rows)
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise polars_error(exc, path, "re-export the file as Parquet, or use CSV") from None
        if df.width == 0:
            raise InputError(path, None, "the file has no columns", "point the config at a non-empty file")
        return df, None  # Parquet has no lines: errors name the row instead
    if suffix not in CSV_SEPARATORS:
        raise InputError(path, None, f"unsupported file type '{suffix}'", f"use one of {sorted([*CSV_SEPARATORS, *PARQUET_SUFFIXES])}")
    return read_table(path, separator=CSV_SEPARATORS[suffix], quote_char=CSV_QUOTE, n_rows=n_rows), 2


def source_column(cfg: DatasetConfig, canonical: str, items: bool) -> str:
    """The source column the config maps to a canonical name (the name itself if unmapped)."""
    if items and ITEMS_KEY_PREFIX + canonical in cfg.columns:
        return cfg.columns[ITEMS_KEY_PREFIX + canonical]
    return cfg.columns.get(canonical, canonical)


def map_columns(df: pl.DataFrame, cfg: DatasetConfig, file: Path, required: tuple[str, ...], optional: tuple[str, ...], items: bool) -> pl.DataFrame:
    """Rename mapped source columns to canonical names; raise InputError for missing required ones."""
    renames: dict[str, str] = {}
    for canonical in (*required, *optional):
        source = source_column(cfg, canonical, items)
        if source in df.columns:
            renames[source] = canonical
        elif canonical in required or source != canonical:  # an explicit mapping must point at a real column
            key = (ITEMS_KEY_PREFIX if items else "") + canonical
            raise missing_column(file, source, df.columns, f"map '{canonical}' to one of the columns present: set dataset.columns.{key}")
    # A column already named like a canonical target but not mapped to it would collide after renaming.
    shadowed = [c for c in df.columns if c in renames.values() and c not in renames]
    return df.drop(shadowed).rename(renames)


def to_seconds(df: pl.DataFrame, cfg: DatasetConfig, file: Path, first_line: int | None) -> pl.DataFrame:
    """Make `timestamp` int64 Unix seconds from numbers, dates or text in cfg.timestamp_format."""
    dtype = df.schema["timestamp"]
    field = source_column(cfg, "timestamp", items=False)
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return df.with_columns(pl.col("timestamp").dt.epoch("s"))
    if dtype == pl.Utf8 and cfg.timestamp_format:
        parsed = df["timestamp"].str.strip_chars().str.strptime(pl.Datetime, cfg.timestamp_format, strict=False)
        bad = parsed.is_null() & df["timestamp"].is_not_null()
        if bad.any():
            row = int(bad.arg_true()[0])
            where = f"line {row + first_line}" if first_line is not None else f"row {row + 1}"
            problem = f"value {df['timestamp'][row]!r} at {where} does not match dataset.timestamp_format {cfg.timestamp_format!r}"
            raise InputError(file, field, problem, "fix the value, or set dataset.timestamp_format to the format the file uses")
        return df.with_columns(parsed.dt.epoch("s").alias("timestamp"))
    try:
        return parse_numbers(df, "timestamp", pl.Int64, file, first_line=first_line, field=field)
    except InputError as exc:
        raise InputError(exc.file, exc.field, exc.problem, TIMESTAMP_FIX) from None


def load_interactions(cfg: DatasetConfig, file: Path) -> pl.DataFrame:
    """The interactions file with canonical columns and types."""
    df, first_line = read_any(file, cfg.max_rows)
    df = map_columns(df, cfg, file, INTERACTION_REQUIRED, INTERACTION_OPTIONAL, items=False)
    df = to_seconds(df, cfg, file, first_line).with_columns(pl.col("user_id", "item_id").cast(pl.Utf8))
    if "rating" in df.columns:
        df = parse_numbers(df, "rating", pl.Float32, file, first_line=first_line, field=source_column(cfg, "rating", items=False))
    else:
        df = df.with_columns(null_ratings())
    if "behavior" in df.columns:
        df = df.with_columns(pl.col("behavior").cast(pl.Utf8))
    return df


def load_items(cfg: DatasetConfig, file: Path) -> pl.DataFrame:
    """The items file with canonical columns; genres split on '|' when given as text."""
    df, first_line = read_any(file)
    df = map_columns(df, cfg, file, ITEM_REQUIRED, ITEM_OPTIONAL, items=True).with_columns(pl.col("item_id", "title").cast(pl.Utf8))
    if "year" in df.columns:
        df = parse_numbers(df, "year", pl.Int32, file, first_line=first_line, field=source_column(cfg, "year", items=True))
    if "genres" in df.columns:
        genres = df.schema["genres"]
        if isinstance(genres, pl.List):
            df = df.with_columns(pl.col("genres").cast(pl.List(pl.Utf8)))
        else:
            df = df.with_columns(split_list("genres", GENRE_SEPARATOR))
    if "description" in df.columns:
        df = df.with_columns(pl.col("description").cast(pl.Utf8))
    return df


def load(cfg: DatasetConfig) -> RawTables:
    """Load interactions (and optionally items and users) from CSV/TSV/Parquet files mapped by dataset.columns."""
    path = Path(cfg.path) if cfg.path else Path(".")
    if path.is_file():
        inter_file, folder = path, path.parent
    elif cfg.interactions:
        inter_file, folder = path / cfg.interactions, path
    else:
        problem = f"dataset.path '{path}' is a folder and no interactions file is named"
        raise ConfigError(None, "dataset.interactions", problem, "set dataset.interactions to the file name inside the folder")
    interactions = load_interactions(cfg, inter_file)
    sources = {"interactions": inter_file}
    if cfg.items:
        items = load_items(cfg, folder / cfg.items)
        sources["items"] = folder / cfg.items
    else:
        items = items_from_interactions(interactions)
    users = None
    if cfg.users:
        users_file = folder / cfg.users
        users, _ = read_any(users_file)
        users = map_columns(users, cfg, users_file, ("user_id",), (), items=False).with_columns(pl.col("user_id").cast(pl.Utf8))
        sources["users"] = users_file
    return RawTables(cfg.name, interactions, items, users, sources)
