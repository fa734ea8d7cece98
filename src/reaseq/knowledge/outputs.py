"""Files of the knowledge step: records, traces, schemas and accounting; joining the files of shards."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from reaseq.errors import InputError
from reaseq.io import write_json
from reaseq.knowledge.agents import GenerationResult
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl, write_jsonl

RECORDS_FILE = "knowledge.jsonl"
TRACES_FILE = "traces.jsonl"
SCHEMAS_FILE = "schemas.json"
ACCOUNTING_FILE = "accounting.json"


def write_generation(result: GenerationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write a run's records, traces (planner traces first), schemas and accounting atomically."""
    out = Path(out_dir)
    return {
        "records": write_jsonl(out / RECORDS_FILE, result.records),
        "traces": write_jsonl(out / TRACES_FILE, [*result.schema_traces, *result.traces]),
        "schemas": write_json(out / SCHEMAS_FILE, {c: s.model_dump(mode="json") for c, s in sorted(result.schemas.items())}),
        "accounting": write_json(out / ACCOUNTING_FILE, result.accounting.to_dict()),
    }


def merge_record_files(inputs: Iterable[str | Path], output: str | Path) -> list[KnowledgeRecord]:
    """Join the record files of shards into one, sorted by item id; an item in two files must be identical."""
    merged: dict[str, tuple[KnowledgeRecord, Path]] = {}
    for path in map(Path, inputs):
        for record in read_jsonl(path, KnowledgeRecord):
            seen = merged.get(record.item_id)
            if seen is None:
                merged[record.item_id] = (record, path)
            elif seen[0] != record:
                raise InputError(
                    path,
                    record.item_id,
                    f"item '{record.item_id}' has a different record in {seen[1]}",
                    "merge the outputs of disjoint shards (--shard i/n with the same n), or regenerate one of them",
                )
    records = [merged[item_id][0] for item_id in sorted(merged)]
    write_jsonl(output, records)
    return records
