"""Records: validation, canonical text, JSONL files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from reaseq.errors import InputError
from reaseq.knowledge.records import (
    KnowledgeRecord,
    KnowledgeSchema,
    read_jsonl,
    render_text,
    write_jsonl,
)


def record(**overrides: object) -> KnowledgeRecord:
    base = {"item_id": "i1", "fields": {"mood": "dark", "genre": ["noir", "crime"]}, "text": "t", "model_id": "m", "source": "generated"}
    return KnowledgeRecord.model_validate({**base, **overrides})


def test_render_text_is_canonical() -> None:
    fields = {"mood": "  dark \n and  moody ", "genre": ["noir", " ", "crime"], "empty": ""}
    assert render_text(fields, ["genre", "mood"]) == "genre: noir; crime\nmood: dark and moody"
    assert render_text(fields) == render_text(dict(reversed(list(fields.items()))))  # independent of dict order
    assert render_text({"target_users": "fans"}) == "target users: fans"


def test_record_status_rules() -> None:
    assert record().status == "ok"
    with pytest.raises(ValidationError, match="needs an error"):
        record(status="failed", fields={}, text="")
    with pytest.raises(ValidationError, match="must not carry fields"):
        record(status="failed", error="x")
    with pytest.raises(ValidationError, match="non-empty text"):
        record(text=" ")
    with pytest.raises(ValidationError):
        record(confidence=1.5)
    with pytest.raises(ValidationError, match="unique"):
        KnowledgeSchema(category="c", dimensions=[{"name": "a", "description": "x"}, {"name": "a", "description": "y"}])
    with pytest.raises(ValidationError):
        KnowledgeSchema(category="c", dimensions=[{"name": "Not Snake", "description": "x"}])


def test_jsonl_roundtrip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "k.jsonl"
    rows = [record(), record(item_id="i2", confidence=0.5)]
    write_jsonl(path, rows)
    assert read_jsonl(path, KnowledgeRecord) == rows
    path.write_text(path.read_text() + '{"item_id": "i3", "model_id": "m", "source": "invented", "text": "x"}\n', encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_jsonl(path, KnowledgeRecord)
    assert err.value.file == str(path) and err.value.field == "line 3: source"
    path.write_text('{"item_id": \n', encoding="utf-8")
    with pytest.raises(InputError, match="line 1.*not valid JSON"):
        read_jsonl(path, KnowledgeRecord)
    with pytest.raises(InputError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl", KnowledgeRecord)
