"""`reaseq demo`: every step end to end on the embedded default dataset (MovieLens-100K), both ReaSeq paths included."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl

from reaseq import pipeline
from reaseq.config import load_config
from reaseq.evaluate.aggregate import format_mean_sd
from reaseq.io import write_text
from reaseq.runs import RunDir

log = logging.getLogger("reaseq")

DEMO_CONFIG = Path(__file__).parent / "resources" / "demo.yaml"
CTR_METRICS = ["auc", "gauc", "logloss"]
TOPK_METRICS = ["hr@10", "ndcg@10", "mrr"]
SASREC_OVERRIDES = ["model.embedding_dim=64", "model.dropout=0.2", "train.batch_size=4096", "train.lr=0.002", "train.epochs=25", "train.patience=5"]
# (protocol, model, config overrides, headline metrics) in the order the demo runs them.
DEMO_RUNS = [
    ("ctr", "popularity", [], CTR_METRICS),
    ("ctr", "din", [], CTR_METRICS),
    ("topk", "popularity", [], TOPK_METRICS),
    ("topk", "sasrec", SASREC_OVERRIDES, TOPK_METRICS),
]
# The full ranker: DIN + RER (aligned knowledge, semantic IDs) + GBR (a second attention over inferred behaviours).
REASEQ_OVERRIDES = ["model.knowledge=aligned", "model.semantic_ids=true", "model.inferred=true", "gbr.time_budget_s=60"]
QUICK_OVERRIDES = ["train.epochs=1", "train.seeds=[0]"]
QUICK_GBR = ["gbr.epochs=2", "gbr.time_budget_s=10"]
# The shipped cache of the embedded model's answers for the demo catalogue; the demo replays it (no model call).
DEMO_PACK = "reaseq:knowledge/ml-100k-smollm2.jsonl.gz"


def run_knowledge_replay(root: Path) -> list[str]:
    """Replay the shipped knowledge pack through the real agents pipeline; report lines for the demo summary."""
    from reaseq.knowledge.step import records_path, resolve_pack, run_knowledge

    pack = resolve_pack(DEMO_PACK)
    if not pack.exists():
        log.info("demo: no shipped knowledge pack at %s; skipping the knowledge step", pack)
        return ["Knowledge: no shipped pack in this install (run `reaseq knowledge` to generate it)."]
    cfg = load_config(DEMO_CONFIG, [f"run_dir={root / 'knowledge'}", f"knowledge.cache.seed_packs=['{DEMO_PACK}']", "knowledge.cache.replay_only=true", "knowledge.agents.progress=false"])
    run = RunDir(cfg.run_dir, cfg)
    pipeline.prepare(run)
    summary = run_knowledge(run)
    return [
        f"Knowledge (embedded model's answers replayed from the shipped cache, no model call): {summary['items_ok']} items with records "
        f"({summary.get('items_unreviewed', 0)} of them without a usable critic score), {summary['items_failed']} without (the model gave no "
        "usable answer, or the item is not in the shipped cache: `reaseq knowledge -c src/reaseq/resources/demo.yaml` generates those). "
        f"Records: `{records_path(run)}`.",
    ]


def demo_records(knowledge_run: Path, items_file: Path, out: Path) -> tuple[Path, str]:
    """RER's input: the replayed LLM records where the pack has them, the items' own metadata for the others."""
    from reaseq.knowledge.records import KnowledgeRecord, read_jsonl, write_jsonl
    from reaseq.represent.step import with_metadata_fallback

    llm_file = knowledge_run / "knowledge" / "knowledge.jsonl"
    llm = read_jsonl(llm_file, KnowledgeRecord) if llm_file.is_file() else []
    merged, counts = with_metadata_fallback(llm, pl.read_parquet(items_file))
    return write_jsonl(out, merged), f"{counts['knowledge']} items with the embedded LLM's knowledge, {counts['metadata_fallback']} with their metadata (title, year, genres)"


def run_reaseq(root: Path, quick: bool) -> tuple[dict[str, Any], str, str]:
    """Both paths end to end: RER tables from the knowledge records, GBR's inferred behaviours, the full ranker."""
    cfg = load_config(DEMO_CONFIG, ["model.name=din", f"run_dir={root / 'ctr-reaseq'}", *REASEQ_OVERRIDES, *(QUICK_OVERRIDES + QUICK_GBR if quick else [])])
    run = RunDir(cfg.run_dir, cfg)
    pipeline.prepare(run)
    records, source = demo_records(root / "knowledge", run.root / "data" / "items.parquet", run.root / "records.jsonl")
    pipeline.embed(run, records)
    pipeline.gbr(run)
    gbr = json.loads((run.root / "gbr" / "summary.json").read_text(encoding="utf-8"))
    gbr_line = (
        f"GBR: {gbr['users']} users x {gbr['k']} inferred items (validity {gbr['validity']:.2f}, novelty {gbr['novelty']:.2f}, "
        f"mean confidence {gbr['mean_confidence']:.3f}), trained {gbr['rounds']} rounds on {gbr['rows_seen']} early training events."
    )
    return pipeline.train(run), source, gbr_line


def run_demo(root: Path, quick: bool = False) -> Path:
    """Prepare ML-100K, train the baselines on both protocols, and write one summary report."""
    table = ["| protocol | model | metric | test (mean ± sd over seeds) |", "|---|---|---|---|"]
    protocols: dict[str, str] = {}
    cards: list[Path] = []
    for protocol, model, extra, metrics in DEMO_RUNS:
        overrides = [f"protocol.name={protocol}", f"model.name={model}", f"run_dir={root / f'{protocol}-{model}'}", *extra]
        cfg = load_config(DEMO_CONFIG, overrides + (QUICK_OVERRIDES if quick else []))
        run = RunDir(cfg.run_dir, cfg)
        pipeline.prepare(run)
        summary = pipeline.train(run)
        protocols[protocol] = summary["protocol_text"]
        cards.append(run.root / "data" / "card.md")
        table += [f"| {protocol} | {model} | {metric} | {format_mean_sd(summary['test'][metric])} |" for metric in metrics]
        log.info("demo: %s/%s done, report %s", protocol, model, run.root / "report.md")
    knowledge_lines = run_knowledge_replay(root)
    summary, source, gbr_line = run_reaseq(root, quick)
    table += [f"| ctr | reaseq (din + rer + gbr) | {metric} | {format_mean_sd(summary['test'][metric])} |" for metric in CTR_METRICS]
    knowledge_lines += ["", f"RER's knowledge: {source}.", gbr_line, f"Full ranker report: `{root / 'ctr-reaseq' / 'report.md'}`."]
    lines = [
        "# ReaSeq demo: MovieLens-100K",
        "",
        *table,
        "",
        *knowledge_lines,
        "",
        f"Seeds: {cfg.train.seeds}. Dataset card: `{cards[0]}`. Per-run reports with curves and slices: `{root}/<protocol>-<model>/report.md`.",
        "",
        "## Protocols",
        "",
        *[f"- {text}" for text in protocols.values()],
        "",
    ]
    print("\n".join(table))
    return write_text(root / "demo_report.md", "\n".join(lines))
