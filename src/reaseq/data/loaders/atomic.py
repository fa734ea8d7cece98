"""RecBole atomic files: NAME.inter, NAME.item and NAME.user (tab-separated, `field:type` headers)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from reaseq.config import DatasetConfig
from reaseq.data.loaders.reading import items_from_interactions, missing_column, null_ratings, parse_numbers, read_table, require_file, split_list
from reaseq.data.tables import RawTables
from reaseq.errors import InputError

SEPARATOR = "\t"
SEQ_SEPARATOR = " "  # RecBole separates the values of *_seq fields with spaces
HEADER_LINES = 1
FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
# Item fields with a canonical meaning, in order of preference; genre fields are always split on spaces
# because some files store the whole genre list in one `token` field (e.g. ml-1m's `genre:token`).
TITLE_FIELDS = ("movie_title", "title")
YEAR_FIELDS = ("release_year", "year")
GENRE_FIELDS = ("genre", "genres", "class", "categories")
HEADER_FIX = "write the header as tab-separated `name:type` fields, e.g. `user_id:token\titem_id:token\ttimestamp:float`"


def atomic_files(cfg: DatasetConfig) -> tuple[str, dict[str, Path]]:
    """Dataset name and the paths of its .inter/.item/.user files (the last two may not exist)."""
    path = Path(cfg.path) if cfg.path else Path(".")
    name = cfg.name
    if path.is_file():
        path, name = path.parent, path.stem
    elif cfg.interactions is None and not (path / f"{name}.inter").exists():
        found = sorted(path.glob("*.inter"))
        if len(found) == 1:  # a folder with exactly one dataset: use it whatever dataset.name says
            name = found[0].stem
    files = {
        "interactions": path / (cfg.interactions or f"{name}.inter"),
        "items": path / (cfg.items or f"{name}.item"),
        "users": path / (cfg.users or f"{name}.user"),
    }
    if not files["interactions"].is_file():
        raise InputError(
            files["interactions"],
            None,
            "the interactions (.inter) file was not found",
            f"set dataset.path to the folder holding '{name}.inter' or set dataset.interactions to its file name",
        )
    return name, files


def read_atomic(path: Path, n_rows: int | None = None) -> tuple[pl.DataFrame, dict[str, str]]:
    """Read an atomic file as text, with the `:type` suffixes stripped; also return name -> type."""
    df = read_table(path, separator=SEPARATOR, n_rows=n_rows)
    types: dict[str, str] = {}
    for header in df.columns:
        name, _, kind = header.partition(":")
        if kind not in FIELD_TYPES:
            raise InputError(path, header, f"header field '{header}' has no valid type (expected one of {list(FIELD_TYPES)})", HEADER_FIX)
        if name in types:
            raise InputError(path, name, f"field '{name}' appears twice in the header", "keep one column per field")
        types[name] = kind
    return df.rename({header: header.partition(":")[0] for header in df.columns}), types


def apply_types(df: pl.DataFrame, types: dict[str, str], file: Path, keep_text: set[str]) -> pl.DataFrame:
    """Convert float fields to numbers and *_seq fields to lists, except the ones in keep_text."""
    for name, kind in types.items():
        if name in keep_text:
            continue
        if kind == "float":
            df = parse_numbers(df, name, pl.Float64, file, first_line=HEADER_LINES + 1, field=f"{name}:{kind}")
        elif kind == "token_seq":
            df = df.with_columns(split_list(name, SEQ_SEPARATOR))
        elif kind == "float_seq":
            floats = split_list(name, SEQ_SEPARATOR).list.eval(pl.element().cast(pl.Float64, strict=False))
            df = df.with_columns(floats)
    return df


def require(df: pl.DataFrame, field: str, file: Path) -> None:
    """Raise an InputError if an atomic file lacks a field the canonical tables need."""
    if field not in df.columns:
        raise missing_column(file, field, df.columns, f"add a '{field}:token' (or ':float') column to the header, or rename the column holding it")


def load_interactions(file: Path, n_rows: int | None) -> pl.DataFrame:
    """The .inter file as canonical interactions (timestamps as int64 seconds)."""
    df, types = read_atomic(file, n_rows)
    for field in ("user_id", "item_id", "timestamp"):
        require(df, field, file)
    df = apply_types(df, types, file, keep_text={"user_id", "item_id", "timestamp", "rating"})
    df = parse_numbers(df, "timestamp", pl.Int64, file, first_line=HEADER_LINES + 1, field=f"timestamp:{types['timestamp']}")
    if "rating" in df.columns:
        df = parse_numbers(df, "rating", pl.Float32, file, first_line=HEADER_LINES + 1, field=f"rating:{types['rating']}")
    else:
        df = df.with_columns(null_ratings())
    return df


def load_items(file: Path) -> pl.DataFrame:
    """The .item file as canonical items: title, year and genres mapped from the usual RecBole fields."""
    df, types = read_atomic(file)
    require(df, "item_id", file)
    title = next((f for f in TITLE_FIELDS if f in df.columns), None)
    year = next((f for f in YEAR_FIELDS if f in df.columns), None)
    genres = next((f for f in GENRE_FIELDS if f in df.columns), None)
    df = apply_types(df, types, file, keep_text={"item_id", *(f for f in (title, year, genres) if f)})
    if title:
        df = df.rename({title: "title"}) if title != "title" else df
    else:
        df = df.with_columns(pl.col("item_id").alias("title"))  # no title field: the id is the best label there is
    if year:
        # A `token` year is free text (ml-100k's has 'unkonwn'): only a `float` year must be numeric.
        strict = types[year] == "float"
        df = parse_numbers(df, year, pl.Int32, file, first_line=HEADER_LINES + 1, field=f"{year}:{types[year]}", strict=strict)
        df = df.rename({year: "year"}) if year != "year" else df
    if genres:
        df = df.with_columns(split_list(genres, SEQ_SEPARATOR))
        df = df.rename({genres: "genres"}) if genres != "genres" else df
    # Some published files repeat identical item rows (ml-100k lists 18 movies twice); conflicting
    # repeats are left for validation to report.
    return df.unique(maintain_order=True)


def load_users(file: Path) -> pl.DataFrame:
    """The .user file: user_id plus every attribute kept as text."""
    df, _ = read_atomic(file)
    require(df, "user_id", file)
    return df.unique(maintain_order=True)


def load(cfg: DatasetConfig) -> RawTables:
    """Load a RecBole atomic dataset from the folder (or .inter file) in cfg.path."""
    name, files = atomic_files(cfg)
    for role, named in (("items", cfg.items), ("users", cfg.users)):
        if named:  # a file the config names explicitly must exist; default names are optional
            require_file(files[role], role, f"fix dataset.{role} or remove it to load without a {role} file")
    interactions = load_interactions(files["interactions"], cfg.max_rows)
    sources = {"interactions": files["interactions"]}
    if files["items"].is_file():
        items = load_items(files["items"])
        sources["items"] = files["items"]
    else:
        items = items_from_interactions(interactions)
    users = None
    if files["users"].is_file():
        users = load_users(files["users"])
        sources["users"] = files["users"]
    return RawTables(name, interactions, items, users, sources)
