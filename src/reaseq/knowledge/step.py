"""The `knowledge` step of a run: generate (or import) item knowledge, resumable, shardable, packable."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from reaseq.errors import InputError
from reaseq.io import sha256_file, write_json
from reaseq.knowledge.accounting import Accounting
from reaseq.knowledge.agents import generate_knowledge, not_generated
from reaseq.knowledge.cache import KnowledgeCache, export_pack, import_pack, merge_caches, read_pack
from reaseq.knowledge.config import KnowledgeConfig
from reaseq.knowledge.importer import import_knowledge
from reaseq.knowledge.item_text import items_from_table
from reaseq.knowledge.outputs import ACCOUNTING_FILE, RECORDS_FILE, merge_record_files, write_generation
from reaseq.knowledge.prompts import load_prompts, prompt_versions
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl, write_jsonl
from reaseq.knowledge.sharding import parse_shard
from reaseq.runs import RunDir

log = logging.getLogger("reaseq")

KNOWLEDGE_DIR = "knowledge"
ITEMS_FILE = Path("data") / "items.parquet"
INTERACTIONS_FILE = Path("data") / "interactions.parquet"
RESOURCE_PREFIX = "reaseq:"


def resolve_pack(spec: str) -> Path:
    """A pack path; 'reaseq:<path>' names a file shipped inside the package (src/reaseq/resources/<path>)."""
    if spec.startswith(RESOURCE_PREFIX):
        return Path(str(resources.files("reaseq") / "resources" / spec[len(RESOURCE_PREFIX) :]))
    return Path(spec)


def cache_dir(run: RunDir) -> Path:
    """The run's LLM-call cache folder."""
    return run.config.knowledge.cache.dir or run.root / KNOWLEDGE_DIR / "cache"


def output_dir(run: RunDir, shard: str | None) -> Path:
    """Where a run (or one shard of it) writes records, traces, schemas and accounting."""
    if shard is None:
        return run.root / KNOWLEDGE_DIR
    index, count = parse_shard(shard)
    return run.root / KNOWLEDGE_DIR / "shards" / f"{index}-of-{count}"


def records_path(run: RunDir) -> Path:
    """The run's merged knowledge records."""
    return run.root / KNOWLEDGE_DIR / RECORDS_FILE


def _items(run: RunDir) -> pl.DataFrame:
    path = run.root / ITEMS_FILE
    if not path.exists():
        raise InputError(path, None, "this run has no prepared items table", "run `reaseq prepare` with this config first")
    return pl.read_parquet(path)


def item_popularity(run: RunDir, items: pl.DataFrame) -> dict[str, float]:
    """Interactions per item id in the prepared data (all of them: the order changes no record, only which come first)."""
    path = run.root / INTERACTIONS_FILE
    if not path.exists():
        raise InputError(path, None, "knowledge.agents.order=popularity needs the prepared interactions", "run `reaseq prepare` with this config first, or use order=catalogue")
    counts = pl.read_parquet(path, columns=["item_idx"]).group_by("item_idx").len()
    joined = items.select("item_idx", pl.col("item_id").cast(pl.String)).join(counts, on="item_idx", how="left")
    return {item_id: float(n or 0) for item_id, n in joined.select("item_id", "len").iter_rows()}


def _step_inputs(run: RunDir, cfg: KnowledgeConfig) -> list[Path]:
    inputs = [run.root / ITEMS_FILE]
    if cfg.source == "import" and cfg.imported is not None:
        inputs.append(Path(cfg.imported.path))
    return inputs


def run_knowledge(run: RunDir, *, shard: str | None = None, regenerate: bool = False) -> dict[str, Any]:
    """Generate (or import) the knowledge records of the catalogue, or of one shard of it; returns the accounting."""
    cfg = run.config.knowledge
    shard = shard or cfg.shard
    items = _items(run)
    out = output_dir(run, shard)
    name = "knowledge" if shard is None else f"knowledge_shard_{out.name}"
    section = {"knowledge": cfg.model_dump(mode="json", exclude={"shard"}), "shard": shard}
    if cfg.source == "generate":
        section["prompts"] = prompt_versions(load_prompts(cfg.agents.prompts_dir))
    key = run.step_key(name, section, _step_inputs(run, cfg))
    if not regenerate and run.is_done(name, key):
        log.info("%s: up to date, skipped (use --regenerate to recompute)", name)
        return _read_accounting(out)
    with run.step(name, key) as record:
        if cfg.source == "import":
            assert cfg.imported is not None  # the config validator guarantees it
            started = time.perf_counter()
            records = import_knowledge(cfg.imported, set(items["item_id"].cast(pl.String).to_list()))
            accounting = Accounting(wall_seconds=time.perf_counter() - started)
            accounting.add_records(records)
            summary = {"source": "imported", "file": str(cfg.imported.path), **accounting.to_dict()}
            write_jsonl(out / RECORDS_FILE, records)
            write_json(out / ACCOUNTING_FILE, summary)
            record.outputs = [str((out / f).relative_to(run.root)) for f in (RECORDS_FILE, ACCOUNTING_FILE)]
        else:
            summary = _generate(run, cfg, items, out, shard, regenerate)
            record.outputs = [str(p.relative_to(run.root)) for p in sorted(out.glob("*.json*"))]
        record.metrics = {k: summary[k] for k in ("items_ok", "items_failed", "items_unreviewed", "wall_seconds")}
    return summary


def _generate(run: RunDir, cfg: KnowledgeConfig, items: pl.DataFrame, out: Path, shard: str | None, regenerate: bool) -> dict[str, Any]:
    from reaseq.knowledge.backends import make_backend  # backends import their runtimes only when chosen

    cache = None
    if cfg.cache.enabled:
        cache = KnowledgeCache(cache_dir(run), reuse=not regenerate, replay_only=cfg.cache.replay_only and not regenerate, keep_failures=cfg.cache.keep_failures)
        if not regenerate:
            for spec in cfg.cache.seed_packs:
                added = import_pack(resolve_pack(spec), cache)
                log.info("knowledge: %d entries added to the cache from %s", added, spec)
    inputs = items_from_table(items, cfg.agents, file=str(run.root / ITEMS_FILE))
    priority = item_popularity(run, items) if cfg.agents.order == "popularity" else None
    result = generate_knowledge(inputs, make_backend(cfg.backend), cfg.agents, cfg.decoding, cache, shard, priority)
    write_generation(result, out)
    summary = result.accounting.to_dict()
    if cache is not None:
        summary["cache"] = {"hits": cache.hits, "misses": cache.misses, "writes": cache.writes, "dir": str(cache.root)}
        write_json(out / ACCOUNTING_FILE, summary)
    return summary


def _read_accounting(out: Path) -> dict[str, Any]:
    import json

    return json.loads((out / ACCOUNTING_FILE).read_text(encoding="utf-8"))


def merge_shards(run: RunDir, shard_dirs: Sequence[Path], caches: Sequence[Path] = ()) -> list[KnowledgeRecord]:
    """Join shard outputs (folders holding knowledge.jsonl) into the run's records, and shard caches into its cache."""
    files = []
    for folder in shard_dirs:
        path = Path(folder) / RECORDS_FILE
        if not path.exists():
            raise InputError(path, None, "no knowledge records in this shard folder", "pass folders written by `reaseq knowledge --shard i/n` (knowledge/shards/<i>-of-<n>)")
        files.append(path)
    if caches:
        report = merge_caches(caches, cache_dir(run))
        log.info("knowledge merge: %d cache entries copied, %d already present", report.copied, report.identical)
    records = merge_record_files(files, records_path(run))
    known = set(_items(run)["item_id"].cast(pl.String).to_list())
    missing = len(known - {r.item_id for r in records})
    if missing:
        log.warning("knowledge merge: %d of %d catalogue items have no record yet (a shard is missing?)", missing, len(known))
    return records


def pack_cache(run: RunDir, out: Path, exclude_packs: Sequence[str] = ()) -> dict[str, Any]:
    """Pack the run's cache into one file, with a manifest beside it; entries already in `exclude_packs` are left out.

    A pack made with exclusions replays only together with the packs it excludes (its manifest lists them under
    `requires`): list them all in knowledge.cache.seed_packs. This keeps a shipped pack to what is new in it.
    """
    cfg = run.config.knowledge
    path = records_path(run)
    if not path.exists():
        raise InputError(path, None, "this run has no knowledge records to pack", "run `reaseq knowledge` first")
    records = read_jsonl(path, KnowledgeRecord)
    cache = KnowledgeCache(cache_dir(run))
    excluded: set[str] = set()
    requires = []
    for spec in exclude_packs:
        pack = resolve_pack(spec)
        keys = {entry["key"] for entry in read_pack(pack)}
        excluded |= keys
        requires.append({"pack": spec, "sha256": sha256_file(pack), "entries": len(keys)})
    count = export_pack(cache, out, [key for key in cache.all_keys() if key not in excluded] if excluded else None)
    model_ids = sorted({r.model_id for r in records})
    outcome = Accounting()
    outcome.add_records(records)
    manifest = {
        "pack": out.name,
        "sha256": sha256_file(out),
        "entries": count,
        "dataset": run.config.dataset.name,
        "items": len(records),
        "items_ok": outcome.items_ok,
        "items_failed": outcome.items_failed,
        # ok records the critic gave no usable answer for (agents.on_critic_failure: keep_unreviewed); no confidence
        "items_unreviewed": outcome.items_unreviewed,
        # of those, items the run could not replay because generation has not reached them (the rest: the model failed)
        "items_not_generated": sum(map(not_generated, records)),
        "requires": requires,
        "model_ids": model_ids,
        "prompt_versions": prompt_versions(load_prompts(cfg.agents.prompts_dir)),
        "backend": cfg.backend.model_dump(mode="json"),
        "decoding": cfg.decoding.model_dump(mode="json"),
        "agents": cfg.agents.model_dump(mode="json"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "how": "reaseq knowledge (embedded model, this config), then reaseq knowledge-pack",
    }
    write_json(out.with_name(out.name.removesuffix(".jsonl.gz") + ".manifest.json"), manifest)
    return manifest
