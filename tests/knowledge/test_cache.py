"""The content-addressed cache: keys, sharded files, stats, merging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reaseq.errors import InputError
from reaseq.knowledge.cache import KnowledgeCache, cache_key, export_pack, import_pack, merge_caches, request_hash

BASE = {"item_text_hash": "h" * 8, "agent": "analyst", "prompt_version": "analyst-v1", "model_id": "m", "decoding": {"temperature": 0.0, "seed": 0}, "request": "r"}


def test_key_is_stable_and_sensitive_to_every_part() -> None:
    key = cache_key(**BASE)
    assert key == cache_key(**{**BASE, "decoding": {"seed": 0, "temperature": 0.0}})  # order does not matter
    for name, other in [("item_text_hash", "x"), ("agent", "critic"), ("prompt_version", "analyst-v2"), ("model_id", "n"), ("decoding", {"temperature": 0.7, "seed": 0}), ("request", "s")]:
        assert cache_key(**{**BASE, name: other}) != key, name
    assert request_hash([{"role": "user", "content": "a"}], None) != request_hash([{"role": "user", "content": "b"}], None)


def test_put_get_layout_and_stats(tmp_path: Path) -> None:
    cache = KnowledgeCache(tmp_path)
    key = cache_key(**BASE)
    assert cache.get(key) is None
    cache.put(key, {"agent": "analyst", "output": {"fields": {"a": "b"}}})
    path = tmp_path / key[:2] / f"{key[2:]}.json"
    assert path.is_file() and json.loads(path.read_text())["key"] == key
    assert cache.get(key)["output"] == {"fields": {"a": "b"}}
    assert not list(tmp_path.rglob("*.tmp"))  # atomic write left no temp file
    stats = cache.stats()
    assert (stats.entries, stats.by_agent, stats.hits, stats.misses, stats.writes) == (1, {"analyst": 1}, 1, 1, 1)


def test_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    cache = KnowledgeCache(tmp_path)
    key = cache_key(**BASE)
    cache.path_for(key).parent.mkdir(parents=True)
    cache.path_for(key).write_text("{truncated", encoding="utf-8")
    assert cache.get(key) is None
    with pytest.raises(ValueError):
        cache.path_for("../../etc/passwd")


def test_merge_copies_missing_and_detects_conflicts(tmp_path: Path) -> None:
    a, b, dest = KnowledgeCache(tmp_path / "a"), KnowledgeCache(tmp_path / "b"), tmp_path / "dest"
    k1, k2, k3 = (cache_key(**{**BASE, "request": r}) for r in "123")
    a.put(k1, {"agent": "planner", "output": 1})
    b.put(k1, {"agent": "planner", "output": 1, "usage": {"seconds": 9}})  # same output, other timing: no conflict
    a.put(k2, {"agent": "analyst", "output": 2})
    b.put(k3, {"agent": "critic", "output": 3})
    report = merge_caches([a.root, b.root], dest)
    assert (report.copied, report.identical, report.conflicts) == (3, 1, [])
    assert {KnowledgeCache(dest).get(k)["output"] for k in (k1, k2, k3)} == {1, 2, 3}

    c = KnowledgeCache(tmp_path / "c")
    c.put(k2, {"agent": "analyst", "output": "different"})
    c.put(cache_key(**{**BASE, "request": "4"}), {"agent": "writer", "output": 4})
    with pytest.raises(InputError, match="different output"):
        merge_caches([c.root], dest)
    assert KnowledgeCache(dest).stats().entries == 3  # nothing copied on conflict
    report = merge_caches([c.root], dest, on_conflict="keep")
    assert report.conflicts == [k2] and report.copied == 1 and KnowledgeCache(dest).get(k2)["output"] == 2
    with pytest.raises(InputError, match="not found"):
        merge_caches([tmp_path / "missing"], dest)


def test_failure_entries_travel_through_packs_and_merges_and_conflict_with_an_output(tmp_path: Path) -> None:
    a = KnowledgeCache(tmp_path / "a")
    ok, failed = (cache_key(**{**BASE, "request": r}) for r in "12")
    a.put(ok, {"agent": "analyst", "output": {"x": 1}})
    a.put(failed, {"agent": "critic", "failure": "no valid answer after 3 attempts", "raw": "{oops"})
    with pytest.raises(ValueError, match="'output' or a 'failure'"):
        a.put(failed, {"agent": "critic"})
    assert export_pack(a, tmp_path / "p.jsonl.gz") == 2
    b = KnowledgeCache(tmp_path / "b")
    assert import_pack(tmp_path / "p.jsonl.gz", b) == 2
    assert b.get(failed)["failure"].startswith("no valid answer") and b.get(ok)["output"] == {"x": 1}
    report = merge_caches([a.root], tmp_path / "b")
    assert report.identical == 2 and report.conflicts == []
    c = KnowledgeCache(tmp_path / "c")
    c.put(failed, {"agent": "critic", "output": {"issues": []}})  # another machine got an answer for the same key
    with pytest.raises(InputError, match="different output"):
        merge_caches([c.root], tmp_path / "b")
