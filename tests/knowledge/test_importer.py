"""Importing existing knowledge from CSV/JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reaseq.errors import InputError
from reaseq.knowledge.config import ImportConfig
from reaseq.knowledge.importer import import_knowledge


def cfg(path: Path, **overrides: object) -> ImportConfig:
    return ImportConfig.model_validate({"path": path, "id_column": "movie_id", "text_columns": ["plot", "tags"], **overrides})


def test_csv_with_mapping_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "k.csv"
    path.write_text("movie_id,plot,tags,other\n1,A heist goes wrong.,crime|noir,x\n2,,,y\n", encoding="utf-8")
    records = import_knowledge(cfg(path, field_names={"plot": "summary"}, list_separators={"tags": "|"}, source_name="catalogue"), known_item_ids={"1", "2"})
    ok, empty = records
    assert ok.source == "imported" and ok.model_id == "catalogue" and ok.confidence is None and ok.prompt_versions == {}
    assert ok.fields == {"summary": "A heist goes wrong.", "tags": ["crime", "noir"]}
    assert ok.text == "summary: A heist goes wrong.\ntags: crime; noir"
    assert empty.status == "failed" and "no text" in empty.error  # kept and flagged, not dropped


def test_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps({"movie_id": 7, "plot": "Space.", "tags": ["sci-fi"]}) + "\n\n" + json.dumps({"movie_id": "8", "plot": "Sea."}) + "\n", encoding="utf-8")
    records = import_knowledge(cfg(path))
    assert [r.item_id for r in records] == ["7", "8"] and records[0].fields["tags"] == ["sci-fi"] and records[1].text == "plot: Sea."


@pytest.mark.parametrize(
    "name, content, overrides, field, match",
    [
        ("k.csv", None, {}, None, "not found"),
        ("k.csv", "id,plot,tags\n1,a,b\n", {}, "movie_id", "no column 'movie_id'"),
        ("k.csv", "movie_id,plot\n1,a\n", {}, "tags", "no column 'tags'"),
        ("k.csv", "movie_id,plot,tags\n1,a,b\n2,c,d\n1,e,f\n", {}, "line 4: movie_id", "already appeared on line 2"),
        ("k.csv", "movie_id,plot,tags\n9,a,b\n", {}, "line 2: movie_id", "not in the catalogue"),
        ("k.csv", "movie_id,plot,tags\n,a,b\n", {}, "line 2: movie_id", "no item id"),
        ("k.csv", "", {}, None, "empty"),
        ("k.jsonl", '{"movie_id": 1, "plot": "a"}\n{oops\n', {}, "line 2", "not valid JSON"),
        ("k.jsonl", '{"movie_id": 1, "plot": "a"}\n', {}, "tags", "no row has the column"),
        ("k.jsonl", '{"movie_id": 1, "plot": {"x": 1}, "tags": []}\n', {}, "line 1: plot", "JSON object"),
        ("k.txt", "movie_id\n", {}, None, "format"),
        ("k.csv", "movie_id,plot,tags\n1,a,b\n", {"field_names": {"plot": "tags"}}, "field_names", "same field name"),
    ],
)
def test_import_errors(tmp_path: Path, name: str, content: str | None, overrides: dict, field: str | None, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=match) as err:
        import_knowledge(cfg(path, **overrides), known_item_ids={"1", "2"})
    assert err.value.file == str(path) and err.value.field == field


def test_non_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "k.csv"
    path.write_bytes("movie_id,plot,tags\n1,ok,x\n2,caf\xe9,y\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8") as err:
        import_knowledge(cfg(path))
    assert err.value.field == "line 3"
