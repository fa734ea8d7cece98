"""The `embed` step: knowledge records -> RER tables (text vectors, aligned vectors, gate, semantic IDs) in the run folder.

Also the two knowledge sources the step can use without an LLM: the items' own metadata (`metadata_records`),
and the collaborative vectors of a trained base ranker (`collab_from_checkpoint`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.data.prepare import PREPARED_FILES
from reaseq.data.protocols import build_topk_split, ctr_train_rows, load_ctr_samples
from reaseq.errors import InputError
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl, render_text
from reaseq.represent.tables import build_tables, companion_paths, save_tables
from reaseq.runs import RunDir

log = logging.getLogger("reaseq")

DATA_DIR = "data"  # the prepare step's folder (pipeline.DATA_DIR)
CTR_SAMPLES_FILE = "ctr_samples.parquet"  # pipeline.CTR_SAMPLES_FILE
EMBED_DIR = "embed"
DEFAULT_NAME = "knowledge"
ENCODER_CACHE = "encoder"  # sentence-vector cache under the run config's data_cache, shared by runs
ID_EMBEDDING_KEY = "item_encoder.parts.id.embedding.weight"  # the DIN checkpoint's item ID table
METADATA_MODEL_ID = "metadata"
# Items-table columns rendered as the "item metadata only" knowledge, in this order, where present.
METADATA_FIELDS = ("title", "year", "genres", "category", "categories", "brand", "description")


def metadata_records(items: pl.DataFrame, fields: Sequence[str] = METADATA_FIELDS) -> list[KnowledgeRecord]:
    """The "item metadata only" knowledge source: one record per item rendering its title, year, genres... as text."""
    if "item_id" not in items.columns:
        raise InputError("items.parquet", "item_id", "the items table has no 'item_id' column", "run `reaseq prepare` to write the canonical items table")
    present = [f for f in fields if f in items.columns]
    records = []
    for row in items.iter_rows(named=True):
        values: dict[str, str | list[str]] = {}
        for name in present:
            value = row[name]
            if isinstance(value, list):
                value = [str(v) for v in value if v is not None and str(v).strip()]
            elif value is not None:
                value = str(value)
            if value:
                values[name] = value
        text = render_text(values, present)
        if text:
            records.append(KnowledgeRecord(item_id=str(row["item_id"]), fields=values, text=text, model_id=METADATA_MODEL_ID, source="imported"))
        else:  # kept and flagged, as the importer does: a gap must stay visible
            records.append(KnowledgeRecord(item_id=str(row["item_id"]), model_id=METADATA_MODEL_ID, source="imported", status="failed", error=f"no value in {present}"))
    return records


def with_metadata_fallback(
    records: Sequence[KnowledgeRecord], items: pl.DataFrame, keep_metadata: bool = False
) -> tuple[list[KnowledgeRecord], dict[str, int]]:
    """One record per catalogue item: its ok record from `records`, else its metadata record; and the counts of each.

    keep_metadata: an answered item's text is its metadata followed by the fields the metadata lacks, so the
    encoder still sees the title and year and the catalogue's genres win over the model's guesses.
    """
    answered = {r.item_id: r for r in records if r.status == "ok"}
    merged = []
    for meta in metadata_records(items):
        record = answered.get(meta.item_id)
        if record is not None and keep_metadata and meta.status == "ok":
            record = _metadata_first(meta, record)
        merged.append(record or meta)
    # Counted by model, not by membership: records that are themselves metadata (a merge done upstream) are fallback.
    used = sum(1 for r in merged if r.model_id != METADATA_MODEL_ID)
    return merged, {"knowledge": used, "metadata_fallback": len(merged) - used}


def _metadata_first(meta: KnowledgeRecord, record: KnowledgeRecord) -> KnowledgeRecord:
    """`record` with `meta`'s fields and text in front; its own fields that `meta` also has are dropped."""
    if record.fields:
        extra = {name: value for name, value in record.fields.items() if name not in meta.fields}
        added = render_text(extra, list(record.fields))
    else:  # an imported text without fields: kept whole
        extra, added = {}, record.text
    text = f"{meta.text}\n{added}" if added else meta.text
    return record.model_copy(update={"fields": {**meta.fields, **extra}, "text": text})


def collab_from_checkpoint(run_dir: str | Path, seed: int) -> np.ndarray:
    """float32 [n_items + 1, D]: the ID embedding table of a trained DIN run (`<run_dir>/train/seed<seed>/model.pt`)."""
    path = Path(run_dir) / "train" / f"seed{seed}" / "model.pt"
    fix = f"train the base DIN first (`reaseq train` with run_dir={run_dir} and seed {seed}), or use represent.collaborative=cooccurrence"
    if not path.is_file():
        raise InputError(path, None, "no checkpoint of the base model", fix)
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    if ID_EMBEDDING_KEY not in state:
        raise InputError(path, ID_EMBEDDING_KEY, "the checkpoint has no item ID embedding (not a DIN checkpoint?)", fix)
    return state[ID_EMBEDDING_KEY].float().numpy()


def texts_by_item(records: Sequence[KnowledgeRecord], items: pl.DataFrame, file: str | Path = "records") -> tuple[dict[int, str], dict[str, int]]:
    """item_idx -> canonical text of the ok records (raw item_id mapped through the items table), and counts."""
    index = dict(zip(items["item_id"].cast(pl.Utf8).to_list(), items["item_idx"].to_list()))
    texts: dict[int, str] = {}
    unmatched = failed = 0
    for record in records:
        if record.status != "ok":
            failed += 1
            continue
        idx = index.get(record.item_id)
        if idx is None:
            unmatched += 1
            continue
        if int(idx) in texts:
            raise InputError(file, "item_id", f"two ok records for item '{record.item_id}'", "keep one record per item")
        texts[int(idx)] = record.text
    counts = {"records": len(records), "failed": failed, "unmatched": unmatched, "matched": len(texts), "catalogue": items.height}
    if unmatched:
        log.warning("embed: %d knowledge record(s) name items not in this catalogue and are ignored", unmatched)
    return texts, counts


def _protocol_rows(run: RunDir, data: SequenceData) -> tuple[SequenceData, np.ndarray]:
    """The sequences and training-row mask of the run's protocol: only these inform the collaborative side."""
    cfg = run.config
    if cfg.protocol.name == "ctr":
        samples = load_ctr_samples(run.root / DATA_DIR / CTR_SAMPLES_FILE)
        return data, ctr_train_rows(data, samples)
    split = build_topk_split(data, cfg.protocol.topk)
    return split.data, split.train_mask()


def _hash_array(array: np.ndarray | None) -> str | None:
    return None if array is None else hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def tables_path(run: RunDir, name: str = DEFAULT_NAME) -> Path:
    """Where the embed step writes its tables (`<run>/embed/<name>.npz`, beside .json and .pt)."""
    return run.root / EMBED_DIR / f"{name}.npz"


def _summary(meta: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    align, ids = meta["reports"]["alignment"], meta["reports"]["semantic_ids"]
    return {
        **{f"records_{k}": v for k, v in counts.items()},
        "n_with_knowledge": meta["n_with_knowledge"],
        "collaborative_source": meta["collaborative_source"],
        "alignment": {k: align[k] for k in ("k", "dim", "n_train", "n_holdout", "n_cold_with_text", "overlap_train", "overlap_holdout", "final_loss", "chance_loss")},
        "semantic_ids": {
            "collision_rate": ids["collision_rate"],
            "unique_tuples": ids["unique_tuples"],
            "per_level": [{k: level[k] for k in ("level", "codes_used", "usage", "normalized_entropy")} for level in ids["per_level"]],
        },
        "timings_s": meta["timings_s"],
    }


def run_embed(
    run: RunDir,
    records_path: Path,
    collab: np.ndarray | None = None,
    force: bool = False,
    name: str = DEFAULT_NAME,
    exclude_items: np.ndarray | None = None,
) -> Path:
    """Build RER's tables from the knowledge records at `records_path`; returns `<run>/embed/<name>.npz`.

    Collaborative vectors: `collab` when given, else the base DIN checkpoint of the run's first seed when
    represent.collaborative is "model", else co-occurrence of the training rows. `exclude_items`: item ids whose
    events are kept out of the collaborative side and the gate (the cold-start protocol). Skipped when the
    records, data, config and collaborative vectors are unchanged (`force` redoes it).
    """
    cfg = run.config
    records_path = Path(records_path)
    if not records_path.is_file():
        raise InputError(records_path, None, "knowledge records file not found", "run the knowledge step first (`reaseq knowledge`) or pass the records file")
    if collab is None and cfg.represent.collaborative == "model":
        collab = collab_from_checkpoint(run.root, cfg.train.seeds[0])
    step = "embed" if name == DEFAULT_NAME else f"embed_{name}"
    out = tables_path(run, name)
    active = cfg.protocol.ctr if cfg.protocol.name == "ctr" else cfg.protocol.topk
    # Progress bars change nothing in the tables: toggling them must not invalidate the step. keep_metadata off
    # stays out of the key, so tables built before the option existed are still up to date.
    unkeyed: dict[str, Any] = {part: {"progress"} for part in ("encoder", "align", "semantic_ids")}
    if not cfg.represent.keep_metadata:
        unkeyed["keep_metadata"] = True
    section = {
        "represent": cfg.represent.model_dump(mode="json", exclude=unkeyed),
        "protocol": {"name": cfg.protocol.name, **active.model_dump()},
        "collab_sha256": _hash_array(collab),
        "exclude_items_sha256": _hash_array(None if exclude_items is None else np.sort(np.asarray(exclude_items, np.int64))),
    }
    data_dir = run.root / DATA_DIR
    if not (data_dir / "vocab.json").is_file():
        raise InputError(data_dir, "vocab.json", "this run has no prepared data", "run `reaseq prepare` with this config first")
    inputs = [records_path, *(data_dir / f for f in (*PREPARED_FILES, CTR_SAMPLES_FILE))]
    key = run.step_key(step, section, inputs)
    if not force and run.is_done(step, key):
        log.info("%s: up to date, skipped (use --force to redo)", step)
        return out
    with run.step(step, key) as record:
        data = load_prepared(data_dir)
        items = pl.read_parquet(data_dir / "items.parquet")
        records = read_jsonl(records_path, KnowledgeRecord)
        # The file's own records are checked and counted first (duplicates, unmatched ids), then merged if asked.
        texts, counts = texts_by_item(records, items, records_path)
        if cfg.represent.keep_metadata:
            merged, merge_counts = with_metadata_fallback(records, items, keep_metadata=True)
            texts, _ = texts_by_item(merged, items, records_path)
            counts.update(merge_counts)
        seq, rows = _protocol_rows(run, data)
        if exclude_items is not None:
            is_excluded = np.zeros(data.n_items + 1, bool)
            is_excluded[np.asarray(exclude_items, np.int64)] = True
            rows = rows & ~is_excluded[seq.items]
        tables = build_tables(texts, seq, rows, collab, cfg.represent, Path(cfg.data_cache) / ENCODER_CACHE)
        save_tables(tables, out)
        record.outputs = [str(p.relative_to(run.root)) for p in companion_paths(out) if p.exists()]
        record.metrics = _summary(tables.meta, counts)
    return out

