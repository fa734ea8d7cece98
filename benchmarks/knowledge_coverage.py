"""How much of a catalogue a knowledge run covers: items and share of interactions by record state, and what the
written records look like (length, how many name the item, how many texts are distinct).

    reaseq knowledge -c configs/ml-1m-ctr.yaml --run-dir runs/ml1m-k --set knowledge.cache.replay_only=true
    python benchmarks/knowledge_coverage.py --run-dir runs/ml1m-k     # results/ml-1m_knowledge_coverage.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line  # noqa: E402

from reaseq import pipeline  # noqa: E402
from reaseq.config import load_config  # noqa: E402
from reaseq.io import write_json  # noqa: E402
from reaseq.knowledge.agents import not_generated  # noqa: E402
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl  # noqa: E402
from reaseq.knowledge.step import KNOWLEDGE_DIR, RECORDS_FILE  # noqa: E402

STATES = ("ok", "failed", "not_generated")


def state(record: KnowledgeRecord) -> str:
    """ok, failed (the model gave no valid answer) or not_generated (no answer in the cache yet)."""
    if record.status == "ok":
        return "ok"
    return "not_generated" if not_generated(record) else "failed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run whose knowledge step has written its records")
    parser.add_argument("--out", type=Path, default=None, help="default: results/<dataset>_knowledge_coverage.json")
    args = parser.parse_args()
    records_file = args.run_dir / KNOWLEDGE_DIR / RECORDS_FILE
    if not records_file.is_file():
        raise SystemExit(f"{records_file} not found: run `reaseq knowledge` (or a replay-only run) on {args.run_dir} first")
    records = read_jsonl(records_file, KnowledgeRecord)
    data_dir = args.run_dir / pipeline.DATA_DIR
    items = pl.read_parquet(data_dir / "items.parquet")
    counts = pl.read_parquet(data_dir / "interactions.parquet").group_by("item_idx").len()
    per_item = dict(zip(items["item_id"], items.join(counts, on="item_idx", how="left")["len"].fill_null(0)))
    total = sum(per_item.values())

    items_by, events_by = Counter(), Counter()
    for record in records:
        record_state = state(record)
        items_by[record_state] += 1
        events_by[record_state] += per_item[record.item_id]
    ok = [r for r in records if r.status == "ok"]
    titles = dict(zip(items["item_id"], items["title"]))
    texts = Counter(r.text for r in ok)
    summary = {
        "median_chars": statistics.median(len(r.text) for r in ok) if ok else None,
        "name_the_item": sum(titles[r.item_id].lower() in r.text.lower() for r in ok) / len(ok) if ok else None,
        "distinct_texts": len(texts),
        "most_shared_text": {"text": texts.most_common(1)[0][0], "items": texts.most_common(1)[0][1]} if ok else None,
    }
    rows = [{"state": s, "items": items_by[s], "interaction_share": events_by[s] / total} for s in STATES]
    print("| state | items | share of interactions |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['state']} | {row['items']:,} | {100 * row['interaction_share']:.1f}% |")
    print(f"ok records: median {summary['median_chars']} chars, {100 * (summary['name_the_item'] or 0):.0f}% name the item, "
          f"{summary['distinct_texts']:,} distinct texts among {len(ok):,}")
    out = args.out or RESULTS / f"{load_config(args.run_dir / 'config.yaml').dataset.name}_knowledge_coverage.json"
    write_json(out, {"benchmark": "knowledge_coverage", "command": command_line(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
                     "records": str(records_file), "items": len(records), "interactions": total, "rows": rows, "records_summary": summary})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
