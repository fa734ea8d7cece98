"""Knowledge schemas, records and reasoning traces; their canonical text and JSONL files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reaseq.errors import InputError
from reaseq.io import json_safe, write_with

DIMENSION_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
# Separator of list values in the canonical text; a semicolon rarely occurs inside a single value.
LIST_SEPARATOR = "; "

FieldValue = str | list[str]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Dimension(_Model):
    """One knowledge dimension: a snake_case name, what it means, and whether it is text or a list."""

    name: str = Field(pattern=DIMENSION_NAME_PATTERN)
    description: str = Field(min_length=1)
    type: Literal["text", "list"] = "text"


class KnowledgeSchema(_Model):
    """The dimensions that matter for recommending items of one category."""

    category: str = Field(min_length=1)
    dimensions: list[Dimension] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> KnowledgeSchema:
        names = [d.name for d in self.dimensions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"dimension names must be unique, repeated: {duplicates}")
        return self

    @property
    def names(self) -> list[str]:
        """Dimension names in schema order (the order of the canonical text)."""
        return [d.name for d in self.dimensions]


class KnowledgeRecord(_Model):
    """The knowledge about one item: structured fields plus the canonical text that gets encoded."""

    item_id: str = Field(min_length=1)
    fields: dict[str, FieldValue] = Field(default_factory=dict)
    text: str = ""
    confidence: float | None = Field(None, ge=0.0, le=1.0)
    model_id: str
    prompt_versions: dict[str, str] = Field(default_factory=dict)
    source: Literal["generated", "imported"]
    status: Literal["ok", "failed"] = "ok"
    error: str | None = None

    @model_validator(mode="after")
    def _status_consistent(self) -> KnowledgeRecord:
        if self.status == "failed":
            # A failure carries its reason and nothing else: no text is ever made up for it.
            if not self.error:
                raise ValueError("a failed record needs an error message")
            if self.fields or self.text:
                raise ValueError("a failed record must not carry fields or text")
        else:
            if self.error is not None:
                raise ValueError("an ok record must not carry an error")
            if not self.text.strip():
                raise ValueError("an ok record needs a non-empty text")
        return self

    @property
    def unreviewed(self) -> bool:
        """An ok generated record the critic gave no usable score for (agents.on_critic_failure: keep_unreviewed)."""
        return self.status == "ok" and self.source == "generated" and self.confidence is None


class TraceStep(_Model):
    """One agent call as it happened: output (reasoning included), attempts, tokens and time."""

    agent: str
    perspective: str | None = None
    prompt_version: str
    cache_key: str
    cached: bool = False
    revision: bool = False  # an analyst's rewrite after the critic asked for one
    attempts: int = 0
    output: dict[str, object] | None = None  # the validated JSON answer
    raw: str | None = None  # the last raw answer when no attempt validated
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class TraceRecord(_Model):
    """The reasoning trace of one item (or of a category's planner when item_id is None)."""

    item_id: str | None
    category: str
    item_text_hash: str | None = None
    steps: list[TraceStep] = Field(default_factory=list)


def _clean(value: str) -> str:
    # Collapsing whitespace makes the text independent of how a model happened to wrap lines.
    return " ".join(value.split())


def render_text(fields: Mapping[str, FieldValue], order: Sequence[str] | None = None) -> str:
    """Canonical, deterministic text of a record: one 'name: value' line per non-empty field."""
    names = list(order) if order is not None else sorted(fields)
    names += sorted(set(fields) - set(names))
    lines = []
    for name in names:
        if name not in fields:
            continue
        value = fields[name]
        if isinstance(value, str):
            rendered = _clean(value)
        else:
            rendered = LIST_SEPARATOR.join(v for v in (_clean(x) for x in value) if v)
        if rendered:
            lines.append(f"{name.replace('_', ' ')}: {rendered}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def write_jsonl(path: str | Path, rows: Iterable[BaseModel]) -> Path:
    """Write models as JSON Lines, atomically."""

    def _write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(json_safe(row.model_dump(mode="json")), ensure_ascii=False, allow_nan=False))
                handle.write("\n")

    return write_with(path, _write)


def json_lines(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of JSON Lines text; a bad line raises InputError."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"line {number}", f"not valid JSON ({exc.msg} at column {exc.colno})", "make every line one JSON object") from None
        if not isinstance(row, dict):
            raise InputError(path, f"line {number}", "the line is not a JSON object", "make every line one JSON object keyed by field name")
        yield number, row


def read_jsonl(path: str | Path, model: type[M]) -> list[M]:
    """Read JSON Lines into models; a bad line raises InputError naming the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found", f"run the step that writes {path.name} first, or fix the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise InputError(path, f"line {line}", "the file is not UTF-8 text", "re-save the file as UTF-8") from None
    rows: list[M] = []
    for number, data in json_lines(path, text):
        try:
            rows.append(model.model_validate(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "<record>"
            raise InputError(
                path,
                f"line {number}: {loc}",
                f"not a valid {model.__name__}: {first['msg']}",
                f"fix '{loc}' on line {number} (or regenerate the file)",
            ) from None
    return rows
