"""The `knowledge` step of a run: generation against a scripted server, shards and merge, import, packs and replay."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from reaseq import pipeline
from reaseq.cli import app
from reaseq.config import RunConfig
from reaseq.errors import InputError
from reaseq.io import sha256_file
from reaseq.knowledge.cache import KnowledgeCache, import_pack, read_pack
from reaseq.knowledge.records import KnowledgeRecord, TraceRecord, read_jsonl
from reaseq.knowledge.step import merge_shards, output_dir, pack_cache, records_path, resolve_pack, run_knowledge
from reaseq.runs import RunDir
from tests.conftest import tiny_overrides
from tests.knowledge.scripted_server import AgentPlayer, ScriptedServer, agent_of, title_of


def knowledge_run(synthetic, tmp_path: Path, server: ScriptedServer, **knowledge: object) -> RunDir:
    """A prepared tiny run whose knowledge step talks to the scripted server."""
    tree = tiny_overrides(synthetic, tmp_path)
    backend = {"kind": "openai_http", "openai_http": {"base_url": server.url, "model": "scripted", "api_key_env": None, "max_retries": 1, "backoff_initial_s": 0.01}}
    tree["knowledge"] = {"backend": backend, "agents": {"progress": False, "default_category": "movie", "item_concurrency": 4}, **knowledge}
    cfg = RunConfig.model_validate(tree)
    run = RunDir(cfg.run_dir, cfg)
    pipeline.prepare(run)
    return run


def n_items(run: RunDir) -> int:
    return pl.read_parquet(run.root / "data" / "items.parquet").height


def test_generate_writes_records_and_is_skipped_when_up_to_date(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    summary = run_knowledge(run)
    records = read_jsonl(records_path(run), KnowledgeRecord)
    assert len(records) == n_items(run) == summary["items_ok"] and all(r.status == "ok" for r in records)
    assert {r.item_id for r in records} == set(pl.read_parquet(run.root / "data" / "items.parquet")["item_id"])
    assert (run.root / "knowledge" / "traces.jsonl").exists() and run.manifest["steps"]["knowledge"]["metrics"]["items_ok"] == len(records)
    sent = len(server.requests)
    run_knowledge(run)  # up to date: no step, no request
    assert len(server.requests) == sent
    again = run_knowledge(run, regenerate=True)  # asks the model again for every call
    assert len(server.requests) > sent and again["cache"]["hits"] == 0


def test_shards_cover_the_catalogue_and_merge(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    sizes = [run_knowledge(run, shard=f"{i}/3")["items_ok"] for i in range(3)]
    assert sum(sizes) == n_items(run) and all(sizes)
    merged = merge_shards(run, [output_dir(run, f"{i}/3") for i in range(3)])
    assert [r.item_id for r in merged] == sorted(r.item_id for r in merged) and len(merged) == n_items(run)
    with pytest.raises(InputError, match="no knowledge records"):
        merge_shards(run, [tmp_path / "nowhere"])


def test_popularity_order_generates_the_most_interacted_items_first(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    tree = run.config.model_dump(mode="json")
    tree["knowledge"]["agents"].update(order="popularity", item_concurrency=1)
    run = RunDir(run.root, RunConfig.model_validate(tree))
    items = pl.read_parquet(run.root / "data" / "items.parquet")
    counts = pl.read_parquet(run.root / "data" / "interactions.parquet").group_by("item_idx").len()
    by_count = items.join(counts, on="item_idx", how="left").fill_null(0).sort(["len", "item_idx"], descending=[True, False])
    run_knowledge(run)
    analysed = [title_of(body) for body in server.requests if agent_of(body) == "analyst" and title_of(body) != "?"]
    assert list(dict.fromkeys(analysed)) == by_count["title"].to_list()  # one item at a time, most interactions first
    records = read_jsonl(records_path(run), KnowledgeRecord)
    assert [r.item_id for r in records] == items["item_id"].cast(pl.String).to_list()  # records stay in catalogue order


def test_pack_then_replay_only_needs_no_model(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    run_knowledge(run)
    pack = tmp_path / "pack.jsonl.gz"
    manifest = pack_cache(run, pack)
    assert manifest["entries"] == KnowledgeCache(run.root / "knowledge" / "cache").stats().entries
    assert manifest["items_ok"] == n_items(run) and manifest["items_not_generated"] == 0
    assert json.loads(pack.with_name("pack.manifest.json").read_text())["sha256"] == manifest["sha256"]
    # A new run with an empty cache, seeded from the pack, replays every answer: zero requests.
    fresh = knowledge_run(synthetic, tmp_path / "fresh", server, cache={"seed_packs": [str(pack)], "replay_only": True})
    sent = len(server.requests)
    summary = run_knowledge(fresh)
    assert len(server.requests) == sent and summary["items_ok"] == n_items(fresh)
    assert read_jsonl(records_path(fresh), KnowledgeRecord) == read_jsonl(records_path(run), KnowledgeRecord)


def test_pack_can_leave_out_what_another_pack_holds(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    run_knowledge(run)
    base = tmp_path / "base.jsonl.gz"
    pack_cache(run, base)
    base_keys = [entry["key"] for entry in read_pack(base)]
    # Take half of the entries out as an older pack; the delta pack holds exactly the other half.
    old = tmp_path / "old.jsonl.gz"
    old.write_bytes(gzip.compress(("\n".join(json.dumps(e) for e in read_pack(base)[::2]) + "\n").encode()))
    manifest = pack_cache(run, tmp_path / "delta.jsonl.gz", [str(old)])
    delta_keys = {entry["key"] for entry in read_pack(tmp_path / "delta.jsonl.gz")}
    assert delta_keys == set(base_keys[1::2]) and manifest["entries"] == len(delta_keys)
    assert manifest["requires"] == [{"pack": str(old), "sha256": sha256_file(old), "entries": len(base_keys[::2])}]
    # Both packs together replay the run without a model call.
    fresh = knowledge_run(synthetic, tmp_path / "fresh", server, cache={"seed_packs": [str(old), str(tmp_path / "delta.jsonl.gz")], "replay_only": True})
    sent = len(server.requests)
    assert run_knowledge(fresh)["items_ok"] == n_items(fresh) and len(server.requests) == sent


def test_replay_only_records_missing_calls_as_failures(synthetic, tmp_path: Path) -> None:
    srv = ScriptedServer(AgentPlayer()).start()
    try:
        run = knowledge_run(synthetic, tmp_path, srv, cache={"replay_only": True})
        summary = run_knowledge(run)
        assert srv.requests == []
    finally:
        srv.stop()
    records = read_jsonl(records_path(run), KnowledgeRecord)
    assert summary["items_ok"] == 0 and all(r.status == "failed" and "planner failed" in (r.error or "") for r in records)
    planner = read_jsonl(run.root / "knowledge" / "traces.jsonl", TraceRecord)[0].steps[0]
    assert planner.agent == "planner" and "not in the knowledge cache" in (planner.error or "")
    manifest = pack_cache(run, tmp_path / "pack.jsonl.gz")  # a pack says which items are not generated yet
    assert manifest["items_failed"] == manifest["items_not_generated"] == len(records)


def test_corrupt_pack_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"key": "nope"}\n'))
    with pytest.raises(InputError, match="valid 'key'"):
        import_pack(bad, KnowledgeCache(tmp_path / "c"))
    (tmp_path / "notgz.jsonl.gz").write_text("plain")
    with pytest.raises(InputError, match="not a gzipped"):
        import_pack(tmp_path / "notgz.jsonl.gz", KnowledgeCache(tmp_path / "c"))
    assert resolve_pack("reaseq:knowledge/x.jsonl.gz").parts[-3:] == ("resources", "knowledge", "x.jsonl.gz")


def test_import_source_through_the_cli(synthetic, tmp_path: Path, server: ScriptedServer) -> None:
    run = knowledge_run(synthetic, tmp_path, server)
    source = tmp_path / "descriptions.csv"
    source.write_text("item_id,description\nm0,A comedy about zero.\nm1,A drama about one.\n", encoding="utf-8")
    config = tmp_path / "import.yaml"
    tree = run.config.model_dump(mode="json")
    tree["knowledge"] = {"source": "import", "imported": {"path": str(source), "text_columns": ["description"], "source_name": "catalogue"}}
    config.write_text(json.dumps(tree), encoding="utf-8")
    result = CliRunner().invoke(app, ["knowledge", "--config", str(config)])
    assert result.exit_code == 0, result.output
    records = read_jsonl(records_path(run), KnowledgeRecord)
    assert [(r.item_id, r.source, r.model_id) for r in records] == [("m0", "imported", "catalogue"), ("m1", "imported", "catalogue")]
    source.write_text("item_id,description\nunknown_item,text\n", encoding="utf-8")
    bad = CliRunner().invoke(app, ["knowledge", "--config", str(config)])
    assert bad.exit_code == 2 and "not in the catalogue" in bad.output
