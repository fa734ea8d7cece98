"""Amazon Reviews 2023 JSONL: a reviews file and its `meta_` item file (.jsonl or .jsonl.gz)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from reaseq.config import DatasetConfig
from reaseq.data.loaders.reading import UTF8_FIX, first_invalid_utf8, open_binary, parse_numbers, polars_error, require_file
from reaseq.data.tables import RawTables
from reaseq.errors import InputError

SUFFIXES = (".jsonl", ".jsonl.gz")
META_PREFIX = "meta_"  # the release names item files meta_<Category>.jsonl next to <Category>.jsonl
MS_PER_SECOND = 1000
# Fields are read as text (numbers included) so that a bad value can be reported by field and line.
REVIEW_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "parent_asin": pl.Utf8,
    "asin": pl.Utf8,
    "rating": pl.Utf8,
    "timestamp": pl.Utf8,
    "title": pl.Utf8,
    "text": pl.Utf8,
    "verified_purchase": pl.Utf8,
    "helpful_vote": pl.Utf8,
}
REVIEW_REQUIRED = ("user_id", "parent_asin", "timestamp")
META_SCHEMA: dict[str, pl.DataType] = {
    "parent_asin": pl.Utf8,
    "title": pl.Utf8,
    "main_category": pl.Utf8,
    "categories": pl.List(pl.Utf8),
    "description": pl.List(pl.Utf8),
    "features": pl.List(pl.Utf8),
    "store": pl.Utf8,
    "average_rating": pl.Utf8,
    "rating_number": pl.Utf8,
    "price": pl.Utf8,
    "details": pl.Utf8,  # a JSON object with shop-specific keys, kept as JSON text
}
META_REQUIRED = ("parent_asin", "title")
TEXT_LIST_JOINER = " "  # description and features are lists of sentences


def find_files(cfg: DatasetConfig) -> tuple[Path, Path]:
    """The reviews and meta files: named in the config, or found by the meta_ naming convention."""
    path = Path(cfg.path) if cfg.path else Path(".")
    folder = path.parent if path.is_file() else path
    if path.is_file():
        reviews = path
    elif cfg.interactions:
        reviews = folder / cfg.interactions
    else:
        found = [p for p in sorted(folder.iterdir()) if p.name.endswith(SUFFIXES) and not p.name.startswith(META_PREFIX)]
        if len(found) != 1:
            raise InputError(
                folder,
                "dataset.interactions",
                f"expected one reviews file (*.jsonl or *.jsonl.gz) in the folder, found {len(found)}",
                "set dataset.interactions to the reviews file name",
            )
        reviews = found[0]
    require_file(reviews, "reviews", "set dataset.path / dataset.interactions to an existing reviews .jsonl(.gz) file")
    meta = folder / (cfg.items or META_PREFIX + reviews.name)
    require_file(meta, "item meta", f"put '{META_PREFIX}{reviews.name}' next to the reviews file or set dataset.items to the meta file name")
    return reviews, meta


def read_jsonl(path: Path, schema: dict[str, pl.DataType], required: tuple[str, ...], n_rows: int | None = None) -> pl.DataFrame:
    """Read the schema's fields of a JSONL file; raise InputError naming the file and the bad field."""
    try:
        df = pl.read_ndjson(path, schema=schema, n_rows=n_rows)
    except pl.exceptions.PolarsError as exc:
        raise describe_jsonl_error(exc, path, schema, n_rows) from None
    if df.height == 0:
        raise InputError(path, None, "the file has no records", "point the config at a non-empty JSONL file")
    for field in required:
        if df[field].null_count() == df.height:
            raise InputError(path, field, f"no record has the field '{field}'", f"check that this is an Amazon Reviews 2023 file; every record needs '{field}'")
    return df


def describe_jsonl_error(exc: Exception, path: Path, schema: dict[str, pl.DataType], n_rows: int | None) -> InputError:
    """Find which field made a JSONL file unreadable (by reading the fields one at a time)."""
    text = str(exc).lower()
    if "utf8" in text.replace("-", ""):
        line, _ = first_invalid_utf8(path, None, has_header=False)
        return InputError(path, None, f"the file is not valid UTF-8 text (first at line {line})", UTF8_FIX)
    if "error parsing line" in text:  # JSON syntax: no single field is to blame
        problem = f"line {first_bad_json_line(path)} is not one complete JSON object"
        return InputError(path, None, problem, "fix or remove that line (each line must hold one JSON record)")
    for field, dtype in schema.items():
        try:
            pl.read_ndjson(path, schema={field: dtype}, n_rows=n_rows)
        except pl.exceptions.PolarsError as field_exc:
            kind = "a JSON list of strings" if isinstance(dtype, pl.List) else "a single JSON value (not a list or object)"
            return polars_error(field_exc, path, f"make '{field}' {kind} in every record", field)
    return polars_error(exc, path, "check that every line is one complete JSON object")


def first_bad_json_line(path: Path) -> int:
    """Line number (1-based, 0 if none) of the first line that is not valid JSON; streamed for large files."""
    with open_binary(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except ValueError:
                return line_no
    return 0


def load_reviews(path: Path, n_rows: int | None) -> pl.DataFrame:
    """Reviews as canonical interactions: item = parent_asin, timestamp in seconds, review text kept."""
    df = read_jsonl(path, REVIEW_SCHEMA, REVIEW_REQUIRED, n_rows)
    df = parse_numbers(df, "rating", pl.Float32, path, first_line=1)
    df = parse_numbers(df, "timestamp", pl.Int64, path, first_line=1)
    df = parse_numbers(df, "helpful_vote", pl.Int64, path, first_line=1)
    return df.select(
        "user_id",
        pl.col("parent_asin").alias("item_id"),
        (pl.col("timestamp") // MS_PER_SECOND).alias("timestamp"),
        "rating",
        "asin",
        pl.col("title").alias("review_title"),
        pl.col("text").alias("review_text"),
        (pl.col("verified_purchase").str.to_lowercase() == "true").alias("verified_purchase"),
        "helpful_vote",
    )


def load_meta(path: Path) -> pl.DataFrame:
    """Item meta as canonical items: categories as genres (main_category when empty), text lists joined."""
    df = read_jsonl(path, META_SCHEMA, META_REQUIRED)
    df = parse_numbers(df, "average_rating", pl.Float32, path, first_line=1)
    df = parse_numbers(df, "rating_number", pl.Int64, path, first_line=1)
    # Prices are free text in places ("None", "from 12.99"): keep what parses as a number.
    df = parse_numbers(df, "price", pl.Float64, path, first_line=1, strict=False)
    categories = pl.col("categories").fill_null([])
    main = pl.concat_list(pl.col("main_category")).list.drop_nulls()
    return df.select(
        pl.col("parent_asin").alias("item_id"),
        pl.col("title").fill_null(pl.col("parent_asin")),  # a few items have no title: the id is the only label
        pl.when(categories.list.len() > 0).then(categories).otherwise(main).alias("genres"),
        pl.col("description").list.join(TEXT_LIST_JOINER).alias("description"),
        pl.col("features").list.join(TEXT_LIST_JOINER).alias("features"),
        "main_category",
        "store",
        "average_rating",
        "rating_number",
        "price",
        "details",
    )


def load(cfg: DatasetConfig) -> RawTables:
    """Load an Amazon Reviews 2023 category (reviews + meta JSONL)."""
    reviews, meta = find_files(cfg)
    return RawTables(cfg.name, load_reviews(reviews, cfg.max_rows), load_meta(meta), None, {"interactions": reviews, "items": meta})
