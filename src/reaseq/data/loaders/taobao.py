"""Taobao UserBehavior.csv: implicit actions (pv/buy/cart/fav) without a header, ~100M rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from reaseq.config import DatasetConfig
from reaseq.data.loaders.reading import describe_read_error, null_ratings, parse_numbers, require_file
from reaseq.data.tables import RawTables
from reaseq.errors import InputError

DEFAULT_FILE = "UserBehavior.csv"
SEPARATOR = ","
COLUMNS = ["user_id", "item_id", "category_id", "behavior", "timestamp"]
BEHAVIORS = ("pv", "buy", "cart", "fav")
TYPED_SCHEMA: dict[str, pl.DataType] = {column: pl.Utf8 if column == "behavior" else pl.Int64 for column in COLUMNS}
READ_BLOCK_BYTES = 1 << 20  # how much of the file a max_rows subset reads at a time
ITEM_TITLE_PREFIX = "item "  # the release has no item text: titles are placeholders built from the id


def behavior_file(cfg: DatasetConfig) -> Path:
    """The UserBehavior CSV: dataset.path itself, or the file inside it."""
    path = Path(cfg.path) if cfg.path else Path(".")
    file = path if path.is_file() else path / (cfg.interactions or DEFAULT_FILE)
    return require_file(file, "interactions", f"set dataset.path to {DEFAULT_FILE} or to its folder (or set dataset.interactions)")


def first_lines(file: Path, max_rows: int) -> bytes:
    """The bytes of the file's first max_rows lines, read block by block: memory follows max_rows, not the file."""
    blocks: list[bytes] = []
    lines = 0
    with open(file, "rb") as handle:
        while lines < max_rows and (block := handle.read(READ_BLOCK_BYTES)):
            count = block.count(b"\n")
            if lines + count >= max_rows:
                end = -1
                for _ in range(max_rows - lines):  # the position of the max_rows-th newline of the file
                    end = block.index(b"\n", end + 1)
                block = block[: end + 1]
            blocks.append(block)
            lines += count
    return b"".join(blocks)


def scan(file: Path, source: Path | bytes, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """Parse the rows of `source` (the file, or the bytes of its first rows) with a schema."""
    try:
        df = pl.scan_csv(source, has_header=False, separator=SEPARATOR, quote_char=None, schema=schema).collect()
    except pl.exceptions.NoDataError:
        df = pl.DataFrame(schema=schema)
    if df.height == 0:
        raise InputError(file, None, "the file is empty", f"point dataset.path at a non-empty {DEFAULT_FILE}")
    return df


def read_behaviors(file: Path, max_rows: int | None) -> pl.DataFrame:
    """The rows with an int64 timestamp; ids stay integers when they all are (much faster to deduplicate)."""
    # polars reads a whole CSV file into memory even for scan_csv(...).head(n): a subset of the 100M-row file
    # is cut out by bytes first, so that only the rows asked for are ever read.
    source: Path | bytes = file if max_rows is None else first_lines(file, max_rows)
    try:
        return scan(file, source, TYPED_SCHEMA)
    except pl.exceptions.PolarsError:
        pass  # not all numbers as expected: re-read as text to find the bad value, or to keep text ids
    try:
        df = scan(file, source, dict.fromkeys(COLUMNS, pl.Utf8))
    except pl.exceptions.PolarsError as exc:
        raise describe_read_error(exc, file, SEPARATOR, has_header=False) from None
    return parse_numbers(df, "timestamp", pl.Int64, file, first_line=1)


def load(cfg: DatasetConfig) -> RawTables:
    """Load Taobao UserBehavior: behavior per row, no ratings, items from the distinct item ids."""
    file = behavior_file(cfg)
    df = read_behaviors(file, cfg.max_rows)
    unknown = ~pl.col("behavior").is_in(BEHAVIORS).fill_null(False)
    bad = df.with_row_index("row").filter(unknown)
    if bad.height:
        value, line = bad["behavior"][0], int(bad["row"][0]) + 1
        raise InputError(
            file,
            "behavior",
            f"unknown behavior {value!r} at line {line} (expected one of {list(BEHAVIORS)}; columns are {COLUMNS})",
            "check the column order and that the file is the original UserBehavior.csv",
        )
    interactions = df.select(pl.col("user_id", "item_id").cast(pl.Utf8), "timestamp", null_ratings(), "behavior")
    # An item belongs to one category; should rows disagree, the first in file order is kept. A stable
    # sort on the integer ids plus a neighbour comparison is much faster than a hash-based unique at 100M rows.
    by_item = df.select("item_id", "category_id").sort("item_id", maintain_order=True)
    items = by_item.filter((pl.col("item_id") != pl.col("item_id").shift(1)).fill_null(True))
    item_id = pl.col("item_id").cast(pl.Utf8)
    items = items.select(
        item_id,
        (ITEM_TITLE_PREFIX + item_id).alias("title"),
        # A one-column reshape makes one-element lists without a slow per-row list build.
        pl.col("category_id").cast(pl.Utf8).reshape((-1, 1)).arr.to_list().alias("genres"),
    )
    return RawTables(cfg.name, interactions, items, None, {"interactions": file, "items": file})
