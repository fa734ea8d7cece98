"""RER's lookup tables (text vectors, aligned vectors, gate, semantic IDs) built end to end, saved and validated."""

from __future__ import annotations

import json
import logging
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reaseq.data.batches import item_train_counts
from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.io import sha256_file, write_json, write_with
from reaseq.represent.align import Projection, load_projection, save_projection, train_alignment
from reaseq.represent.config import RepresentConfig
from reaseq.represent.cooccurrence import as_row_indices, cooccurrence_embeddings
from reaseq.represent.encode import encode_texts, model_identity
from reaseq.represent.semantic_ids import semantic_ids

log = logging.getLogger("reaseq.represent")

NO_CODE = -1  # semantic ID of padding and of items without knowledge; +1 in the ranker makes it padding
ARRAYS: dict[str, tuple[int, str]] = {  # name -> (ndim, numpy dtype kind)
    "text_vectors": (2, "f"),
    "aligned": (2, "f"),
    "gate": (1, "f"),
    "semantic_ids": (2, "i"),
    "has_knowledge": (1, "b"),
}


@dataclass
class KnowledgeTables:
    """Per-item lookup tables indexed by item id (row 0 = padding)."""

    text_vectors: np.ndarray  # float32 [I+1, dt]; zeros where an item has no knowledge text
    aligned: np.ndarray  # float32 [I+1, d] in the collaborative space; zeros without knowledge
    gate: np.ndarray  # float32 [I+1]: weight of the ID part (count / (count + pivot)); 1 - gate for knowledge
    semantic_ids: np.ndarray  # int64 [I+1, L], codes 0..codes-1, NO_CODE (-1) for padding / no knowledge
    has_knowledge: np.ndarray  # bool [I+1]
    meta: dict[str, Any] = field(default_factory=dict)  # model identity, config, reports, timings
    projection: Projection | None = None  # the text -> collaborative projection, for a ranker to reuse or fine-tune
    collab_basis: np.ndarray | None = None  # [d, dc] when the collaborative vectors were reduced to d dimensions

    @property
    def n_items(self) -> int:
        """Real items (rows minus padding)."""
        return len(self.has_knowledge) - 1


def companion_paths(path: str | Path) -> tuple[Path, Path, Path]:
    """The .npz arrays, the .json meta and the .pt projection of one table set."""
    path = Path(path)
    return path.with_suffix(".npz"), path.with_suffix(".json"), path.with_suffix(".pt")


def save_tables(tables: KnowledgeTables, path: str | Path) -> Path:
    """Write the arrays (.npz), the meta (.json, with the arrays' checksum) and the projection (.pt) atomically."""
    arrays_path, meta_path, projection_path = companion_paths(path)
    _check(tables_arrays(tables), arrays_path)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a handle, so numpy does not append ".npz" to the temporary name
            np.savez(handle, **tables_arrays(tables))

    write_with(arrays_path, write)
    if tables.projection is not None:
        save_projection(tables.projection, projection_path, tables.collab_basis)
    meta = {
        **tables.meta,
        "n_items": tables.n_items,
        "arrays": {name: list(array.shape) for name, array in tables_arrays(tables).items()},
        "arrays_sha256": sha256_file(arrays_path),
    }
    write_json(meta_path, meta)
    return arrays_path


def tables_arrays(tables: KnowledgeTables) -> dict[str, np.ndarray]:
    """The saved arrays by name."""
    return {name: getattr(tables, name) for name in ARRAYS}


def _check(arrays: Mapping[str, np.ndarray], file: Path) -> None:
    fix = "re-run the embed step (`reaseq embed --force`) to rebuild the tables"
    rows = len(arrays["has_knowledge"]) if arrays["has_knowledge"].ndim == 1 else -1
    for name, (ndim, kind) in ARRAYS.items():
        array = arrays[name]
        if array.ndim != ndim or array.dtype.kind != kind:
            raise InputError(file, name, f"expected a {ndim}-d array of kind '{kind}', got {array.dtype} {array.shape}", fix)
        if array.shape[0] != rows:
            raise InputError(file, name, f"{array.shape[0]} rows, but has_knowledge has {rows} (one per item id incl. padding)", fix)
    if rows < 1:
        raise InputError(file, "has_knowledge", "no rows (row 0 is padding and must exist)", fix)


def load_tables(path: str | Path) -> KnowledgeTables:
    """Read tables written by `save_tables`, checking every array's shape and the meta's checksum."""
    arrays_path, meta_path, projection_path = companion_paths(path)
    fix = "re-run the embed step (`reaseq embed --force`) to rebuild the tables"
    for file in (arrays_path, meta_path):
        if not file.is_file():
            raise InputError(file, None, "knowledge table file is missing", fix)
    try:
        with np.load(arrays_path, allow_pickle=False) as npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                raise InputError(arrays_path, missing[0], "array missing", fix)
            arrays = {name: npz[name] for name in ARRAYS}
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(arrays_path, None, f"cannot read the knowledge tables ({err})", fix) from err
    _check(arrays, arrays_path)
    if meta.get("arrays_sha256") not in (None, sha256_file(arrays_path)):
        raise InputError(meta_path, "arrays_sha256", f"does not match {arrays_path.name} (the two files come from different runs)", fix)
    if meta.get("n_items") not in (None, len(arrays["has_knowledge"]) - 1):
        raise InputError(meta_path, "n_items", f"says {meta['n_items']}, the arrays hold {len(arrays['has_knowledge']) - 1}", fix)
    projection, basis = load_projection(projection_path) if projection_path.is_file() else (None, None)
    return KnowledgeTables(**arrays, meta=meta, projection=projection, collab_basis=basis)


def build_tables(
    texts_by_item: Mapping[int, str],
    data: SequenceData,
    train_rows: np.ndarray,
    collab: np.ndarray | None,
    cfg: RepresentConfig,
    cache_dir: Path | None,
) -> KnowledgeTables:
    """Encode -> (co-occurrence vectors if `collab` is None) -> align -> semantic IDs, for items 1..n_items.

    `texts_by_item` maps item id to its canonical knowledge text; items without (non-blank) text get zero
    vectors, has_knowledge False and no semantic ID. Only `train_rows` (a row mask or indices) inform the
    collaborative side, so validation and test events never reach the tables.
    """
    timings: dict[str, float] = {}
    rows_n = data.n_items + 1
    outside = sorted(int(i) for i in texts_by_item if not 1 <= int(i) <= data.n_items)
    if outside:
        raise InputError(None, "item_id", f"{len(outside)} knowledge text(s) for item ids outside 1..{data.n_items}, e.g. {outside[:5]}", "key texts by the prepared item index (items.parquet item_idx)")
    items = np.array(sorted(int(i) for i, text in texts_by_item.items() if text and text.strip()), np.int64)
    if len(items) < 2:
        raise InputError(None, "text", f"only {len(items)} item(s) have a knowledge text", "run the knowledge step (or import knowledge) for the catalogue first")

    started = time.perf_counter()
    vectors = encode_texts([texts_by_item[int(i)] for i in items], cfg.encoder, cache_dir)
    text_vectors = np.zeros((rows_n, vectors.shape[1]), np.float32)
    text_vectors[items] = vectors
    has_knowledge = np.zeros(rows_n, bool)
    has_knowledge[items] = True
    timings["encode"] = time.perf_counter() - started

    rows = as_row_indices(data, train_rows)
    counts = item_train_counts(data, rows)
    started = time.perf_counter()
    if collab is None:
        source = "cooccurrence"
        collab = cooccurrence_embeddings(data, rows, cfg.cooccurrence_dim, cfg.cooccurrence_window, cfg.align.seed)
        log.info("collaborative vectors: PPMI co-occurrence + SVD, %d dims, window %d", cfg.cooccurrence_dim, cfg.cooccurrence_window)
    else:
        source = "model"
        collab = np.asarray(collab, np.float32)
        if collab.ndim != 2 or collab.shape[0] != rows_n:
            raise InputError(None, "collab", f"collaborative vectors of shape {collab.shape}, expected [{rows_n}, d] (one row per item id incl. padding)", "pass the base model's item embedding table")
    timings["collaborative"] = time.perf_counter() - started

    started = time.perf_counter()
    alignment = train_alignment(text_vectors, collab, counts, cfg.align)
    timings["align"] = time.perf_counter() - started
    log.info("aligned %d item(s): neighbour overlap@%d train %s -> %s, holdout %s -> %s", len(items), alignment.report["k"],
             alignment.report["overlap_train"]["raw"], alignment.report["overlap_train"]["aligned"],
             alignment.report["overlap_holdout"]["raw"], alignment.report["overlap_holdout"]["aligned"])

    started = time.perf_counter()
    ids = semantic_ids(alignment.aligned[items], cfg.semantic_ids)
    table = np.full((rows_n, ids.codes.shape[1]), NO_CODE, np.int64)
    table[items] = ids.codes
    timings["semantic_ids"] = time.perf_counter() - started
    log.info("semantic ids: %d level(s), collision rate %.4f before dedup", ids.codes.shape[1], ids.report["collision_rate"])

    meta = {
        "model_identity": model_identity(cfg.encoder),
        "config": cfg.model_dump(mode="json"),
        "collaborative_source": source,
        "n_with_knowledge": len(items),
        "reports": {"alignment": alignment.report, "semantic_ids": ids.report},
        "timings_s": timings,
    }
    return KnowledgeTables(text_vectors, alignment.aligned, alignment.gate, table, has_knowledge, meta, alignment.projection, alignment.collab_basis)
