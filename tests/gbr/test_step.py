"""The gbr pipeline step and the dual-sequence ranker: what GBR may see, when the ranker may read it, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from reaseq import pipeline
from reaseq.ablate import row_config, run_ablation
from reaseq.config import RunConfig
from reaseq.data.batches import CTRBatcher
from reaseq.data.dataset import load_prepared
from reaseq.data.protocols import TRAIN, load_ctr_samples
from reaseq.errors import ConfigError, InputError
from reaseq.gbr.augment import InferredBehaviours, ctr_train_rows, gbr_rows, load_inferred, read_inferred_table
from reaseq.gbr.config import GBRConfig
from reaseq.rank.ctr import run_ctr
from reaseq.rank.models.din import build_din
from reaseq.represent.config import AlignConfig, EncoderConfig, RepresentConfig, SemanticIdConfig
from reaseq.runs import RunDir

TINY_GBR = GBRConfig(dim=8, layers=1, heads=2, max_len=12, batch_size=32, epochs=3, patience=2, k=4, steps=2, num_threads=1)
REPRESENT = RepresentConfig(
    encoder=EncoderConfig(progress=False),
    align=AlignConfig(epochs=3, batch_size=16, hidden=16, neighbour_k=3, progress=False),
    semantic_ids=SemanticIdConfig(levels=2, codes=4, progress=False),
    cooccurrence_dim=8,
    cooccurrence_window=3,
)


@pytest.fixture
def run(run_config: RunConfig) -> RunDir:
    run = RunDir(run_config.run_dir, run_config.model_copy(update={"gbr": TINY_GBR, "represent": REPRESENT}))
    pipeline.prepare(run)
    return run


def _data(run: RunDir):  # noqa: ANN202
    folder = run.root / "data"
    return load_prepared(folder), load_ctr_samples(folder / "ctr_samples.parquet")


def test_gbr_sees_only_early_training_rows_and_no_label_it_could_leak(run: RunDir) -> None:
    data, samples = _data(run)
    rows, as_of = gbr_rows(data, samples, 0.5)
    train = ctr_train_rows(data, samples)
    assert not (rows & ~train).any()  # never a validation or test event
    for user in range(data.n_users):
        own = np.arange(data.offsets[user], data.offsets[user + 1])
        n_train = int(train[own].sum())
        assert rows[own].sum() == n_train // 2
        assert as_of[user] == data.offsets[user] + n_train // 2
    # Every sample allowed to read the table stands for an event GBR never saw; held-out samples always may.
    usable = samples.pos >= as_of[samples.user]
    assert not rows[samples.pos[usable]].any()
    assert usable[samples.split != TRAIN].all()
    assert (~usable[samples.split == TRAIN]).any() and usable[samples.split == TRAIN].any()


def test_batches_blank_inferred_items_before_as_of(run: RunDir) -> None:
    data, samples = _data(run)
    k = 3
    items = np.tile(np.arange(1, k + 1), (data.n_users, 1))
    as_of = data.offsets[:-1] + 4
    behaviours = InferredBehaviours(items, np.full((data.n_users, k), 0.5, np.float32), as_of)
    batch = next(CTRBatcher(data, 10, behaviours).iterate(samples, len(samples)))
    usable = torch.from_numpy(samples.pos >= as_of[samples.user])
    assert torch.equal(batch["inf_items"][usable], torch.from_numpy(items[samples.user])[usable])
    assert (batch["inf_items"][~usable] == 0).all() and (batch["inf_conf"][~usable] == 0).all()
    assert "inf_items" not in next(CTRBatcher(data, 10).iterate(samples, 8))


def test_dual_sequence_din_reads_the_inferred_sequence_and_the_targets_confidence(run: RunDir) -> None:
    data, samples = _data(run)
    cfg = run.config.model.model_copy(update={"inferred": True})
    torch.manual_seed(0)
    model = build_din(data, cfg).eval()
    k = 4
    behaviours = InferredBehaviours(np.tile(np.arange(1, k + 1), (data.n_users, 1)), np.full((data.n_users, k), 0.9, np.float32), np.zeros(data.n_users, np.int64))
    batch = next(CTRBatcher(data, 10, behaviours).iterate(samples, 64))
    with torch.no_grad():
        base = model(batch)
        blank = model({**batch, "inf_items": torch.zeros_like(batch["inf_items"]), "inf_conf": torch.zeros_like(batch["inf_conf"])})
        target_inferred = model({**batch, "inf_items": batch["item"].unsqueeze(1).repeat(1, k)})
    assert torch.isfinite(blank).all()  # a sample with no inferred items pools to zero, no NaN
    assert not torch.allclose(base, blank) and not torch.allclose(base, target_inferred)
    with pytest.raises(KeyError):
        model({key: value for key, value in batch.items() if not key.startswith("inf_")})


def test_gbr_step_writes_a_resumable_table_and_the_ranker_trains_on_it(run: RunDir) -> None:
    path = pipeline.gbr(run)
    data, samples = _data(run)
    table = read_inferred_table(path, data.n_items)
    assert table.height == data.n_users * TINY_GBR.k
    behaviours = load_inferred(path, data.n_users, data.n_items)
    rows, as_of = gbr_rows(data, samples, TINY_GBR.as_of_frac)
    assert np.array_equal(behaviours.as_of, as_of)
    seen = [set(data.items[np.flatnonzero(rows)][data.users[rows] == u]) for u in range(data.n_users)]
    assert all(not (set(behaviours.items[u]) & seen[u]) for u in range(data.n_users))  # inferred = not in what GBR saw
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["validity"] == 1.0 and summary["rows_seen"] == int(rows.sum())
    mtime = path.stat().st_mtime_ns
    assert pipeline.gbr(run) == path and path.stat().st_mtime_ns == mtime  # unchanged inputs: skipped

    cfg = run.config.model_copy(update={"model": run.config.model.model_copy(update={"inferred": True, "inferred_table": path})})
    result = run_ctr(data, samples, cfg, seed=0)
    assert 0.0 < result["test"]["metrics"]["auc"] < 1.0


def test_inferred_ranker_without_a_table_or_with_a_broken_one_is_a_clear_error(run: RunDir, tmp_path: Path) -> None:
    data, samples = _data(run)
    cfg = run.config.model_copy(update={"model": run.config.model.model_copy(update={"inferred": True})})
    with pytest.raises(ConfigError, match="reaseq gbr"):
        run_ctr(data, samples, cfg, seed=0)
    broken = tmp_path / "broken.parquet"
    pl.DataFrame({"user": [0], "slot": [0], "item": [1]}).write_parquet(broken)
    with pytest.raises(InputError, match="confidence"):
        load_inferred(broken, data.n_users, data.n_items)
    with pytest.raises(InputError, match="reaseq gbr"):
        load_inferred(tmp_path / "absent.parquet", data.n_users, data.n_items)


def test_hit_rows_read_gbr_as_a_feature_of_the_target_only(run: RunDir, tmp_path: Path) -> None:
    data, _ = _data(run)
    table, tables = tmp_path / "inferred.parquet", tmp_path / "knowledge.npz"
    for row in ("din_gbr_hit", "reaseq_hit"):
        model = row_config(run.config, row, tables, table).model
        assert model.inferred and model.inferred_table == table and not model.inferred_attention and model.inferred_target_indicator
    assert row_config(run.config, "reaseq_hit", tables, table).model.knowledge_tables == tables
    din_gbr = build_din(data, row_config(run.config, "din_gbr", None, table).model)
    hit = build_din(data, row_config(run.config, "din_gbr_hit", None, table).model)
    assert din_gbr.inferred.attention is not None and hit.inferred.attention is None and hit.inferred.out_dim == 2


@pytest.mark.slow
def test_ablation_writes_every_row_report_and_plot_and_resumes(run: RunDir) -> None:
    record = run_ablation(run, ["din", "din_gbr", "reaseq"], [0], jobs=2)  # spawned workers, as on a GPU machine
    folder = run.root / "ablation"
    assert [row["name"] for row in record["rows"]] == ["din", "din_gbr", "reaseq"]
    assert record["knowledge_source"].startswith("item metadata")
    assert {"sparse_users", "long_tail"} <= set(record["rows"][0]["subsets"])
    assert "reaseq vs din / all / auc" in record["gains"]
    assert (folder / "report.md").read_text().count("| reaseq |") == 1 and (folder / "ablation.png").stat().st_size > 0
    stamp = (folder / "rows" / "reaseq_seed0.json").stat().st_mtime_ns
    din_stamp = (folder / "rows" / "din_seed0.json").stat().st_mtime_ns
    again = run_ablation(run, ["din", "din_gbr", "reaseq"], [0])
    assert (folder / "rows" / "reaseq_seed0.json").stat().st_mtime_ns == stamp
    assert again["rows"][2]["metrics"]["auc"] == record["rows"][2]["metrics"]["auc"]
    # Other training settings make other rows: a cached result is never reused for them.
    other = RunDir(run.root, run.config.model_copy(update={"train": run.config.train.model_copy(update={"lr": 0.002})}))
    run_ablation(other, ["din"], [0])
    assert (folder / "rows" / "din_seed0.json").stat().st_mtime_ns != din_stamp
