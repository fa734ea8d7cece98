"""The knowledge packs shipped inside the package: intact, described by their manifests, complete with what they need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reaseq.io import sha256_file
from reaseq.knowledge.cache import read_pack
from reaseq.knowledge.step import resolve_pack

PACKS = sorted(resolve_pack("reaseq:knowledge/").glob("*.jsonl.gz"))


def manifest_of(pack: Path) -> dict:
    return json.loads(pack.with_name(pack.name.removesuffix(".jsonl.gz") + ".manifest.json").read_text(encoding="utf-8"))


def test_packs_are_shipped() -> None:
    assert {p.name for p in PACKS} >= {"ml-100k-smollm2.jsonl.gz", "ml-1m-smollm2.jsonl.gz"}


@pytest.mark.parametrize("pack", PACKS, ids=lambda p: p.name)
def test_a_shipped_pack_matches_its_manifest_and_its_required_packs_are_shipped(pack: Path) -> None:
    manifest = manifest_of(pack)
    entries = read_pack(pack)  # every line a valid entry
    assert manifest["sha256"] == sha256_file(pack) and manifest["entries"] == len(entries)
    assert manifest["items"] == manifest["items_ok"] + manifest["items_failed"] >= manifest["items_not_generated"]
    keys = {e["key"] for e in entries}
    for required in manifest.get("requires", []):
        path = resolve_pack(required["pack"])
        assert sha256_file(path) == required["sha256"], f"{pack.name} was packed against another {path.name}"
        assert keys.isdisjoint(e["key"] for e in read_pack(path))  # a delta pack holds only what is new
