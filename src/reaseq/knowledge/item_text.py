"""Item metadata as the text the agents read (and whose hash keys the cache)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import polars as pl

from reaseq.errors import InputError
from reaseq.io import sha256_text
from reaseq.knowledge.config import AgentsConfig

TRUNCATION_MARK = " [...]"
LIST_JOIN = ", "


@dataclass(frozen=True)
class ItemInput:
    """One item as the agents see it."""

    item_id: str
    category: str
    text: str

    @cached_property
    def text_hash(self) -> str:
        """sha256 of the metadata text (the item part of every cache key)."""
        return sha256_text(self.text)


def _format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return LIST_JOIN.join(s for s in (_format_value(v) for v in value) if s)
    return " ".join(str(value).split())


def item_metadata_text(row: Mapping[str, Any], fields: Sequence[str], max_chars: int) -> str:
    """'field: value' lines for the fields the row has and that are not empty, cut at max_chars."""
    lines = []
    for name in fields:
        value = _format_value(row.get(name))
        if value:
            lines.append(f"{name}: {value}")
    text = "\n".join(lines)
    if len(text) > max_chars:
        text = text[: max_chars - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def _category(row: Mapping[str, Any], column: str | None, default: str) -> str:
    if column is None:
        return default
    value = row.get(column)
    if isinstance(value, (list, tuple)):  # a category path: its root names the category
        value = value[0] if value else None
    text = _format_value(value)
    return text or default


def items_from_table(items: pl.DataFrame, cfg: AgentsConfig, file: str = "items.parquet") -> list[ItemInput]:
    """ItemInputs from the prepared items table (columns item_id, title, year, genres, description, ...)."""
    if "item_id" not in items.columns:
        raise InputError(file, "item_id", "the items table has no 'item_id' column", "run `reaseq prepare` to write the canonical items table")
    if cfg.category_column is not None and cfg.category_column not in items.columns:
        raise InputError(file, cfg.category_column, "agents.category_column is not a column of the items table", f"use one of {items.columns} or unset it")
    present = [f for f in cfg.item_text_fields if f in items.columns]
    if not present:
        raise InputError(file, ",".join(cfg.item_text_fields), "none of agents.item_text_fields is a column of the items table", f"choose text columns among {items.columns}")
    out = []
    for row in items.iter_rows(named=True):
        item_id = str(row["item_id"])
        out.append(ItemInput(item_id, _category(row, cfg.category_column, cfg.default_category), item_metadata_text(row, present, cfg.max_item_text_chars)))
    return out
