"""The canonical raw tables every loader returns, and their validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from reaseq.errors import InputError

# Canonical columns. Loaders rename source columns to these names; everything downstream relies on them.
INTERACTION_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "timestamp": pl.Int64,
    "rating": pl.Float32,  # explicit feedback; null for implicit data
}
OPTIONAL_INTERACTION_COLUMNS: dict[str, pl.DataType] = {
    "behavior": pl.Utf8,  # implicit action type (pv, cart, buy, review...)
}
ITEM_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
}
# Optional item columns with a fixed meaning; any other extra column is kept as an attribute.
OPTIONAL_ITEM_COLUMNS: dict[str, pl.DataType] = {
    "year": pl.Int32,
    "genres": pl.List(pl.Utf8),  # category path or genre list
    "description": pl.Utf8,
}


@dataclass
class RawTables:
    """Interactions, items and users with raw (string) ids, as a loader produced them."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame
    users: pl.DataFrame | None = None
    sources: dict[str, Path] = field(default_factory=dict)  # role -> file it was read from

    def source_of(self, role: str) -> str:
        """The file a table came from, for error messages."""
        return str(self.sources.get(role, f"<{self.name} {role}>"))


def require_columns(df: pl.DataFrame, required: dict[str, pl.DataType], file: str | Path, what: str) -> pl.DataFrame:
    """Check that df has the canonical columns, cast them, and name the file and column on failure."""
    present = set(df.columns)
    for column, dtype in required.items():
        if column not in present:
            close = [c for c in df.columns if c.lower().replace(" ", "_") == column]
            hint = f" (found '{close[0]}': rename it or map it in the config)" if close else ""
            raise InputError(
                file,
                column,
                f"the {what} table has no column '{column}'{hint}; columns present: {sorted(present)}",
                f"provide a '{column}' column or map an existing one to it under `dataset.columns` in the config",
            )
        if df.schema[column] != dtype:
            try:
                df = df.with_columns(pl.col(column).cast(dtype, strict=True))
            except Exception as exc:  # polars raises several types for failed casts
                raise InputError(
                    file,
                    column,
                    f"column '{column}' of the {what} table cannot be read as {dtype}: {str(exc).splitlines()[0]}",
                    f"make every value of '{column}' a valid {dtype} (no text in numeric columns, no empty cells)",
                ) from None
    return df


def validate(tables: RawTables) -> RawTables:
    """Validate and normalise a loader's output; raise InputError naming file, field and fix."""
    inter_file = tables.source_of("interactions")
    if tables.interactions.height == 0:
        raise InputError(inter_file, None, "the interactions table is empty", "point the config at a file with at least one interaction row")
    inter = require_columns(tables.interactions, INTERACTION_SCHEMA, inter_file, "interactions")
    for column in ("user_id", "item_id", "timestamp"):
        nulls = inter[column].null_count()
        if nulls:
            row = int(inter.with_row_index("row").filter(pl.col(column).is_null())["row"][0])
            raise InputError(inter_file, column, f"{nulls} rows have no value, the first at data row {row}", f"fill or drop the rows without '{column}'")
    items = require_columns(tables.items, ITEM_SCHEMA, tables.source_of("items"), "items")
    if items["item_id"].is_duplicated().any():
        dup = items.filter(pl.col("item_id").is_duplicated())["item_id"][0]
        raise InputError(tables.source_of("items"), "item_id", f"item id '{dup}' appears more than once", "keep one row per item id")
    return RawTables(tables.name, inter, items, tables.users, tables.sources)
