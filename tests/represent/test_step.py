"""The embed step on a tiny synthetic run (real embedded encoder): tables, manifest, resumability, training rows only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from reaseq import pipeline
from reaseq.config import RunConfig
from reaseq.data.protocols import TRAIN
from reaseq.errors import InputError
from reaseq.knowledge.records import KnowledgeRecord, write_jsonl
from reaseq.rank.ctr import run_ctr
from reaseq.represent.config import AlignConfig, EncoderConfig, RepresentConfig, SemanticIdConfig
from reaseq.represent.step import collab_from_checkpoint, ctr_train_rows, metadata_records, run_embed, texts_by_item, with_metadata_fallback
from reaseq.represent.tables import load_tables
from reaseq.runs import RunDir

REPRESENT = RepresentConfig(
    encoder=EncoderConfig(progress=False),
    align=AlignConfig(epochs=5, batch_size=16, hidden=16, neighbour_k=3, progress=False),
    semantic_ids=SemanticIdConfig(levels=2, codes=4, progress=False),
    cooccurrence_dim=8,
    cooccurrence_window=3,
)


@pytest.fixture
def run(run_config: RunConfig) -> RunDir:
    run = RunDir(run_config.run_dir, run_config.model_copy(update={"represent": REPRESENT}))
    pipeline.prepare(run)
    return run


def _items(run: RunDir) -> pl.DataFrame:
    return pl.read_parquet(run.root / "data" / "items.parquet")


def _records(run: RunDir, path: Path, extra: list[KnowledgeRecord] | None = None) -> Path:
    return write_jsonl(path, [*metadata_records(_items(run)), *(extra or [])])


def test_metadata_records_render_title_year_and_genres() -> None:
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alien", "Heat", None], "year": [1979, None, None], "genres": [["Horror", "Sci-Fi"], [], None]})
    records = {r.item_id: r for r in metadata_records(items)}
    assert records["a"].text == "title: Alien\nyear: 1979\ngenres: Horror; Sci-Fi"
    assert records["a"].fields == {"title": "Alien", "year": "1979", "genres": ["Horror", "Sci-Fi"]}
    assert records["b"].text == "title: Heat"
    assert all(r.source == "imported" and r.model_id == "metadata" for r in records.values())
    assert records["c"].status == "failed" and not records["c"].text  # nothing to say is flagged, never invented
    with pytest.raises(InputError, match="item_id"):
        metadata_records(items.drop("item_id"))


def test_metadata_fallback_keeps_ok_answers_and_fills_the_rest() -> None:
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alien", "Heat", "Ran"]})
    llm = [
        KnowledgeRecord(item_id="b", text="mood: tense", model_id="smollm2", source="generated"),
        KnowledgeRecord(item_id="c", model_id="smollm2", source="generated", status="failed", error="no valid answer"),
        KnowledgeRecord(item_id="z", text="not in this catalogue", model_id="smollm2", source="generated"),
    ]
    merged, counts = with_metadata_fallback(llm, items)
    assert [(r.item_id, r.model_id, r.text) for r in merged] == [("a", "metadata", "title: Alien"), ("b", "smollm2", "mood: tense"), ("c", "metadata", "title: Ran")]
    assert counts == {"knowledge": 1, "metadata_fallback": 2}


def test_keep_metadata_puts_the_catalogue_facts_before_the_answer() -> None:
    items = pl.DataFrame({"item_id": ["a", "b", "c"], "title": ["Alien", "Heat", "Ran"], "genres": [["Horror"], ["Crime"], ["Drama"]]})
    llm = [
        KnowledgeRecord(item_id="a", fields={"genres": ["Comedy"], "mood": "dread"}, text="genres: Comedy\nmood: dread", model_id="smollm2", source="generated"),
        KnowledgeRecord(item_id="b", fields={"genres": ["Action"]}, text="genres: Action", model_id="smollm2", source="generated"),
        KnowledgeRecord(item_id="c", text="a samurai epic", model_id="importer", source="imported"),
    ]
    merged, counts = with_metadata_fallback(llm, items, keep_metadata=True)
    texts = {r.item_id: r.text for r in merged}
    # The model's wrong genre gives way to the catalogue's; what it adds (mood) follows the metadata.
    assert texts["a"] == "title: Alien\ngenres: Horror\nmood: dread"
    assert merged[0].fields == {"title": "Alien", "genres": ["Horror"], "mood": "dread"} and merged[0].model_id == "smollm2"
    assert texts["b"] == "title: Heat\ngenres: Crime"  # nothing beyond the metadata
    assert texts["c"] == "title: Ran\ngenres: Drama\na samurai epic"  # a text without fields is kept whole
    assert counts == {"knowledge": 3, "metadata_fallback": 0}
    # Without keep_metadata the answers replace the metadata, as before.
    plain, _ = with_metadata_fallback(llm, items)
    assert plain[0].text == "genres: Comedy\nmood: dread"
    # Records merged upstream (answers plus metadata fallback) merge again to the same texts and counts.
    upstream, _ = with_metadata_fallback(llm[:1], items)
    again, again_counts = with_metadata_fallback(upstream, items, keep_metadata=True)
    assert [r.text for r in again] == ["title: Alien\ngenres: Horror\nmood: dread", "title: Heat\ngenres: Crime", "title: Ran\ngenres: Drama"]
    assert again_counts == {"knowledge": 1, "metadata_fallback": 2}


def test_records_map_to_item_indices_through_the_items_table() -> None:
    items = pl.DataFrame({"item_idx": [1, 2], "item_id": ["x", "y"]})
    records = [
        KnowledgeRecord(item_id="y", text="about y", model_id="m", source="imported"),
        KnowledgeRecord(item_id="z", text="not ours", model_id="m", source="imported"),
        KnowledgeRecord(item_id="x", model_id="m", source="generated", status="failed", error="timeout"),
    ]
    texts, counts = texts_by_item(records, items)
    assert texts == {2: "about y"}
    assert counts == {"records": 3, "failed": 1, "unmatched": 1, "matched": 1, "catalogue": 2}
    with pytest.raises(InputError, match="two ok records"):
        texts_by_item(records[:1] * 2, items)


def test_ctr_train_rows_stop_before_each_users_first_held_out_sample(run: RunDir) -> None:
    data, samples, _ = pipeline.load_data(run)
    rows = ctr_train_rows(data, samples)
    held_out = samples.split != TRAIN
    first = np.full(data.n_users, np.iinfo(np.int64).max)
    np.minimum.at(first, samples.user[held_out], samples.pos[held_out])
    assert np.all(np.flatnonzero(rows) < first[data.users[rows]])
    assert rows[samples.pos[samples.split == TRAIN]].all()  # every training sample's event is a training row
    assert not rows[samples.pos[held_out]].any()


def test_run_embed_end_to_end_and_resumable(run: RunDir, tmp_path: Path) -> None:
    records = _records(run, tmp_path / "records.jsonl", [KnowledgeRecord(item_id="not-in-catalogue", text="x", model_id="m", source="imported")])
    path = run_embed(run, records)
    assert path == run.root / "embed" / "knowledge.npz"
    tables = load_tables(path)
    data, samples, _ = pipeline.load_data(run)
    assert tables.n_items == data.n_items and tables.has_knowledge[1:].all() and not tables.has_knowledge[0]
    assert tables.projection is not None and tables.meta["collaborative_source"] == "cooccurrence"
    # The gate counts training rows only: an item seen only in valid/test events is cold for RER.
    counts = np.bincount(data.items[ctr_train_rows(data, samples)], minlength=data.n_items + 1)
    np.testing.assert_array_equal(tables.gate[1:] == 0, counts[1:] == 0)
    step = run.manifest["steps"]["embed"]
    assert step["metrics"]["records_unmatched"] == 1 and step["metrics"]["records_matched"] == data.n_items
    assert "overlap_holdout" in step["metrics"]["alignment"] and "collision_rate" in step["metrics"]["semantic_ids"]
    assert {"embed/knowledge.npz", "embed/knowledge.json", "embed/knowledge.pt"} <= set(step["outputs"])
    stamp = path.stat().st_mtime_ns
    # Same inputs: skipped (also from a fresh RunDir reading the manifest back).
    again = RunDir(run.root, run.config)
    assert run_embed(again, records) == path and path.stat().st_mtime_ns == stamp
    assert json.loads(again.manifest_path.read_text())["steps"]["embed"]["started"] == step["started"]
    # Changed records (or --force) redo it.
    run_embed(again, records, force=True)
    assert path.stat().st_mtime_ns != stamp


def test_excluded_items_get_gate_zero_and_named_tables_sit_beside(run: RunDir, tmp_path: Path) -> None:
    records = _records(run, tmp_path / "records.jsonl")
    excluded = np.array([1, 2, 3])
    path = run_embed(run, records, name="cold", exclude_items=excluded)
    assert path.name == "cold.npz" and "embed_cold" in run.manifest["steps"]
    tables = load_tables(path)
    assert np.all(tables.gate[excluded] == 0) and tables.gate[4:].max() > 0 and tables.has_knowledge[excluded].all()


def test_keep_metadata_fills_every_item_and_redoes_only_when_on(run: RunDir, tmp_path: Path) -> None:
    answered = [str(i) for i in _items(run)["item_id"][:12]]
    answers = [KnowledgeRecord(item_id=i, fields={"mood": f"mood {n}"}, text=f"mood: mood {n}", model_id="m", source="generated") for n, i in enumerate(answered)]
    records = write_jsonl(tmp_path / "llm.jsonl", answers)
    plain = load_tables(run_embed(run, records))
    assert plain.has_knowledge[1:].sum() == len(answered)  # the answers alone: the other items have no text
    key = run.manifest["steps"]["embed"]["key"]
    # keep_metadata off is the default and leaves the step key as it was.
    assert run_embed(RunDir(run.root, run.config), records) and run.manifest["steps"]["embed"]["key"] == key
    on = run.config.model_copy(update={"represent": REPRESENT.model_copy(update={"keep_metadata": True})})
    kept_run = RunDir(run.root, on)
    tables = load_tables(run_embed(kept_run, records))
    metrics = kept_run.manifest["steps"]["embed"]["metrics"]
    assert kept_run.manifest["steps"]["embed"]["key"] != key
    assert tables.has_knowledge[1:].all() and metrics["records_knowledge"] == len(answered)
    assert metrics["records_matched"] == len(answered)  # the file's own records, counted before the merge
    assert metrics["records_metadata_fallback"] == len(_items(run)) - len(answered)
    # The merge keeps one record per item, so a file with two answers for one item must still be refused.
    twice = write_jsonl(tmp_path / "twice.jsonl", [*answers, answers[0]])
    with pytest.raises(InputError, match="two ok records"):
        run_embed(kept_run, twice, name="twice")


def test_collaborative_vectors_from_a_trained_din(run: RunDir, tmp_path: Path) -> None:
    data, samples, _ = pipeline.load_data(run)
    seed_dir = run.root / "train" / "seed0"
    run_ctr(data, samples, run.config, 0, seed_dir)
    collab = collab_from_checkpoint(run.root, 0)
    assert collab.shape == (data.n_items + 1, run.config.model.embedding_dim) and np.all(collab[0] == 0)
    path = run_embed(run, _records(run, tmp_path / "records.jsonl"), collab=collab)
    assert load_tables(path).meta["collaborative_source"] == "model" and load_tables(path).aligned.shape[1] == collab.shape[1]
    with pytest.raises(InputError, match="checkpoint"):
        collab_from_checkpoint(run.root, 99)
    # represent.collaborative=model reads the run's own checkpoint when no vectors are passed.
    model_cfg = run.config.model_copy(update={"represent": REPRESENT.model_copy(update={"collaborative": "model"})})
    model_run = RunDir(run.root, model_cfg)
    assert load_tables(run_embed(model_run, tmp_path / "records.jsonl", name="from_model")).meta["collaborative_source"] == "model"


def test_missing_records_or_data_are_input_errors(run: RunDir, run_config: RunConfig, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="records file not found"):
        run_embed(run, tmp_path / "none.jsonl")
    bare = RunDir(tmp_path / "bare", run_config)
    records = _records(run, tmp_path / "records.jsonl")
    with pytest.raises(InputError, match="no prepared data"):
        run_embed(bare, records)
