"""Raw GroupLens MovieLens folders: ml-100k (u.data, u.item, u.user) and ml-1m (*.dat)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from reaseq.config import DatasetConfig
from reaseq.data.loaders.reading import parse_numbers, read_table, require_file
from reaseq.data.tables import RawTables
from reaseq.errors import InputError

ENCODING = "latin-1"  # GroupLens files predate UTF-8 (titles such as "Misérables, Les")
ML100K_FILES = {"interactions": "u.data", "items": "u.item", "users": "u.user"}
ML1M_FILES = {"interactions": "ratings.dat", "items": "movies.dat", "users": "users.dat"}
ML100K_GENRES = [  # the order of u.item's 19 genre flag columns (see u.genre)
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
ML100K_ITEM_COLUMNS = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES]
ML100K_USER_COLUMNS = ["user_id", "age", "gender", "occupation", "zip_code"]
ML1M_USER_COLUMNS = ["user_id", "gender", "age", "occupation", "zip_code"]
RATING_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
ML1M_SEPARATOR = "::"
ML1M_GENRE_SEPARATOR = "|"
# Lines of a .dat file are read whole and split afterwards, because polars needs a one-byte separator.
LINE_SEPARATOR = "\x1f"
TITLE_YEAR = r"^(.*?)\s*\((\d{4})\)\s*$"  # "Toy Story (1995)" -> "Toy Story", 1995
ML1M_MOVIE_LINE = r"^([^:]*)::(.*)::([^:]*)$"  # the title may itself contain colons


def detect(folder: Path) -> dict[str, Path]:
    """The interactions/items/users files of whichever MovieLens release the folder holds."""
    for files in (ML100K_FILES, ML1M_FILES):
        if (folder / files["interactions"]).is_file():
            return {role: folder / name for role, name in files.items()}
    raise InputError(
        folder,
        None,
        "this folder holds neither ml-100k (u.data) nor ml-1m (ratings.dat) files",
        "point dataset.path at the unzipped ml-100k or ml-1m folder",
    )


def split_title(df: pl.DataFrame) -> pl.DataFrame:
    """Move the "(YYYY)" suffix of the title into a year column."""
    parts = pl.col("title").str.extract_groups(TITLE_YEAR)
    return df.with_columns(
        pl.coalesce(parts.struct.field("1"), pl.col("title")).alias("title"),
        parts.struct.field("2").cast(pl.Int32).alias("year"),
    )


def ratings(file: Path, df: pl.DataFrame, first_line: int) -> pl.DataFrame:
    """Type a user/item/rating/timestamp table read as text."""
    for column in ("user_id", "item_id", "rating", "timestamp"):
        if df[column].null_count():
            row = int(df[column].is_null().arg_true()[0])
            raise InputError(file, column, f"line {row + first_line} has no {column}", "restore the file from the original archive")
    df = parse_numbers(df, "rating", pl.Float32, file, first_line=first_line)
    return parse_numbers(df, "timestamp", pl.Int64, file, first_line=first_line)


def load_100k(files: dict[str, Path], n_rows: int | None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """u.data (tab), u.item (pipe, 19 genre flags) and u.user (pipe)."""
    inter = read_table(files["interactions"], separator="\t", has_header=False, names=RATING_COLUMNS, n_rows=n_rows, encoding=ENCODING)
    inter = ratings(files["interactions"], inter, first_line=1)
    items_file = require_file(files["items"], "items", "restore u.item from the ml-100k archive")
    items = read_table(items_file, separator="|", has_header=False, names=ML100K_ITEM_COLUMNS, encoding=ENCODING)
    flags = [pl.when(pl.col(genre).str.strip_chars() == "1").then(pl.lit(genre)) for genre in ML100K_GENRES]
    items = split_title(items.with_columns(pl.concat_list(flags).list.drop_nulls().alias("genres")))
    # Titles without a "(YYYY)" suffix fall back to the year of the release date ("01-Jan-1995").
    release_year = pl.col("release_date").str.extract(r"(\d{4})\s*$").cast(pl.Int32)
    items = items.with_columns(pl.coalesce("year", release_year).alias("year"))
    items = items.select("item_id", "title", "year", "genres", "release_date", "imdb_url")
    users = None
    if files["users"].is_file():
        users = read_table(files["users"], separator="|", has_header=False, names=ML100K_USER_COLUMNS, encoding=ENCODING)
    return inter, items, users


def read_dat(file: Path, columns: list[str], n_rows: int | None = None) -> pl.DataFrame:
    """A `::`-separated ml-1m file with exactly the given columns, as text."""
    lines = read_table(file, separator=LINE_SEPARATOR, has_header=False, names=["line"], n_rows=n_rows, encoding=ENCODING)
    parts = pl.col("line").str.split_exact(ML1M_SEPARATOR, len(columns) - 1).struct.rename_fields(columns)
    return lines.select(parts).unnest("line")


def load_1m(files: dict[str, Path], n_rows: int | None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """ratings.dat, movies.dat and users.dat (all `::`-separated)."""
    inter = ratings(files["interactions"], read_dat(files["interactions"], RATING_COLUMNS, n_rows), first_line=1)
    movies_file = require_file(files["items"], "items", "restore movies.dat from the ml-1m archive")
    lines = read_table(movies_file, separator=LINE_SEPARATOR, has_header=False, names=["line"], encoding=ENCODING)
    parts = pl.col("line").str.extract_groups(ML1M_MOVIE_LINE)
    items = lines.select(
        parts.struct.field("1").alias("item_id"),
        parts.struct.field("2").alias("title"),
        parts.struct.field("3").str.split(ML1M_GENRE_SEPARATOR).alias("genres"),
    )
    if items["item_id"].null_count():
        row = int(items["item_id"].is_null().arg_true()[0])
        raise InputError(movies_file, "item_id", f"line {row + 1} is not `MovieID::Title::Genres`", "restore movies.dat from the ml-1m archive")
    items = split_title(items).select("item_id", "title", "year", "genres")
    users = read_dat(files["users"], ML1M_USER_COLUMNS) if files["users"].is_file() else None
    return inter, items, users


def load(cfg: DatasetConfig) -> RawTables:
    """Load an unzipped GroupLens ml-100k or ml-1m folder."""
    folder = Path(cfg.path) if cfg.path else Path(".")
    files = detect(folder.parent if folder.is_file() else folder)
    loader = load_100k if files["interactions"].name == ML100K_FILES["interactions"] else load_1m
    inter, items, users = loader(files, cfg.max_rows)
    sources = {role: path for role, path in files.items() if role != "users" or users is not None}
    return RawTables(cfg.name, inter, items, users, sources)
