"""Import knowledge users already have (CSV/JSONL keyed by item id) as records with source 'imported'."""

from __future__ import annotations

import csv
import io
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from reaseq.errors import InputError
from reaseq.knowledge.config import ImportConfig
from reaseq.knowledge.records import FieldValue, KnowledgeRecord, json_lines, render_text

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise InputError(path, None, f"cannot tell the format from the suffix '{suffix}'", "name the file .csv, .tsv or .jsonl, or set imported.format")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise InputError(path, None, "file not found", "fix knowledge.imported.path")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # tolerate the byte-order mark spreadsheet programs write
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(path, f"line {line}", f"the file is not UTF-8 (byte {exc.start} cannot be decoded)", "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None


def _csv_rows(path: Path, text: str, cfg: ImportConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=CSV_SUFFIXES.get(path.suffix.lower(), ","))
    header = reader.fieldnames or []
    if not header:
        raise InputError(path, None, "the file is empty (no header row)", f"write a header row with '{cfg.id_column}' and the text columns")
    for column in [cfg.id_column, *cfg.text_columns]:
        if column not in header:
            raise InputError(path, column, f"no column '{column}'; columns present: {header}", "fix imported.id_column / imported.text_columns or the header")
    for row in reader:
        yield reader.line_num, row


def _value(raw: Any, column: str, separator: str | None, path: Path, line: int) -> FieldValue | None:
    if raw is None:
        return None
    if isinstance(raw, list):
        if any(isinstance(v, (dict, list)) for v in raw):
            raise InputError(path, f"line {line}: {column}", "nested lists or objects cannot be imported", "flatten the value to text or a list of texts")
        return [str(v) for v in raw if v is not None]
    if isinstance(raw, dict):
        raise InputError(path, f"line {line}: {column}", "a JSON object cannot be imported as a field", "flatten it to text, or import its parts as separate columns")
    text = str(raw)
    if separator is not None:
        return [part.strip() for part in text.split(separator) if part.strip()]
    return text


def import_knowledge(cfg: ImportConfig, known_item_ids: Collection[str] | None = None) -> list[KnowledgeRecord]:
    """Records (source 'imported') from a CSV/JSONL file; InputError on missing columns, duplicate or unknown ids, non-UTF-8."""
    path = Path(cfg.path)
    names = [cfg.field_names.get(column, column) for column in cfg.text_columns]
    if len(set(names)) != len(names):
        raise InputError(path, "field_names", f"two text columns map to the same field name: {names}", "give each text column its own field name")
    text = _read_text(path)
    fmt = _format_of(path, cfg.format)
    rows = _csv_rows(path, text, cfg) if fmt == "csv" else json_lines(path, text)
    records: list[KnowledgeRecord] = []
    first_line: dict[str, int] = {}
    columns_seen: set[str] = set()
    for line, row in rows:
        raw_id = row.get(cfg.id_column)
        item_id = "" if raw_id is None else str(raw_id).strip()
        if not item_id:
            raise InputError(path, f"line {line}: {cfg.id_column}", "the row has no item id", f"give every row a '{cfg.id_column}' value, or drop the row")
        if item_id in first_line:
            raise InputError(path, f"line {line}: {cfg.id_column}", f"item id '{item_id}' already appeared on line {first_line[item_id]}", "keep one row per item (join its texts into one row first)")
        first_line[item_id] = line
        if known_item_ids is not None and item_id not in known_item_ids:
            raise InputError(path, f"line {line}: {cfg.id_column}", f"item id '{item_id}' is not in the catalogue", "use the dataset's raw item ids (items.item_id), or drop rows of other items")
        fields: dict[str, FieldValue] = {}
        for column, name in zip(cfg.text_columns, names, strict=True):
            if column in row:
                columns_seen.add(column)
            value = _value(row.get(column), column, cfg.list_separators.get(column), path, line)
            if value:
                fields[name] = value
        rendered = render_text(fields, names)
        if rendered:
            records.append(KnowledgeRecord(item_id=item_id, fields=fields, text=rendered, model_id=cfg.source_name, source="imported"))
        else:  # kept, flagged: a silent gap would look like an item nobody described
            records.append(KnowledgeRecord(item_id=item_id, model_id=cfg.source_name, source="imported", status="failed", error=f"no text in the columns {cfg.text_columns}"))
    if not records:
        raise InputError(path, None, "the file has no data rows", "add one row per item")
    missing = [c for c in cfg.text_columns if c not in columns_seen]
    if missing:
        raise InputError(path, missing[0], f"no row has the column '{missing[0]}'", "fix imported.text_columns or the file's keys")
    return records
