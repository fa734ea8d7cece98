"""Slice bucketing, seed aggregation, the benchmark record and the written report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from reaseq.evaluate.aggregate import aggregate_runs, format_mean_sd, mean_sd
from reaseq.evaluate.metrics import ctr_metrics, topk_metrics
from reaseq.evaluate.report import write_report
from reaseq.evaluate.results import benchmark_record, markdown_table
from reaseq.io import write_json as write_json_atomic
from reaseq.evaluate.slices import assign_buckets, bucket_labels, ctr_slices, slice_metrics, topk_slices


def test_bucket_labels_and_inclusive_upper_edges() -> None:
    assert bucket_labels([5, 20, 50]) == ["1-5", "6-20", "21-50", "51+"]
    assert bucket_labels([1, 2]) == ["1", "2", "3+"]
    values = [0, 1, 5, 6, 20, 21, 50, 51, 1000]
    expected = ["0", "1-5", "1-5", "6-20", "6-20", "21-50", "21-50", "51+", "51+"]
    assert assign_buckets(values, [5, 20, 50]).cast(pl.String).to_list() == expected
    with pytest.raises(ValueError):
        bucket_labels([5, 5])
    with pytest.raises(ValueError):
        bucket_labels([0, 5])


def test_slice_metrics_in_bucket_order_with_counts() -> None:
    frame = pl.DataFrame({"rank": [0, 3, 12, 40, 1]}).with_columns(
        assign_buckets([60, 2, 7, 2, 0], [5, 50]).alias("b")
    )
    rows = slice_metrics(frame, "b", lambda part: topk_metrics(part["rank"].to_numpy(), [10]))
    assert [(r["bucket"], r["count"]) for r in rows] == [("0", 1), ("1-5", 2), ("6-50", 1), ("51+", 1)]
    assert rows[1]["metrics"]["hr@10"] == pytest.approx(0.5)


def test_ctr_and_topk_slices() -> None:
    rng = np.random.default_rng(0)
    n = 400
    users = rng.integers(0, 30, n)
    labels = rng.integers(0, 2, n)
    probs = rng.random(n)
    hist = rng.integers(1, 80, n)
    pop = rng.integers(0, 300, n)
    result = ctr_slices(users, labels, probs, hist, pop, history_edges=[5, 20], popularity_edges=[10, 100])
    assert set(result) == {"history_length", "item_popularity"}
    assert sum(r["count"] for r in result["history_length"]) == n
    first = result["history_length"][0]
    mask = hist <= 5
    assert first["bucket"] == "1-5"
    assert first["metrics"] == pytest.approx(ctr_metrics(users[mask], labels[mask], probs[mask]), nan_ok=True)

    ranks = rng.integers(0, 500, n)
    top = topk_slices(ranks, hist, pop, [10, 20], history_edges=[5, 20], popularity_edges=[10, 100])
    assert [r["bucket"] for r in top["item_popularity"]] == ["0", "1-10", "11-100", "101+"]
    assert sum(r["count"] for r in top["item_popularity"]) == n


def test_mean_sd_and_aggregate() -> None:
    result = mean_sd([0.79, 0.80, 0.81])
    assert result["mean"] == pytest.approx(0.80)
    assert result["sd"] == pytest.approx(0.01)
    assert result["values"] == [0.79, 0.80, 0.81]
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": 0.0, "values": [0.5]}
    runs = aggregate_runs([{"auc": 0.7, "gauc": 0.6}, {"auc": 0.8, "gauc": 0.6}])
    assert runs["auc"]["mean"] == pytest.approx(0.75) and runs["gauc"]["sd"] == 0.0
    with pytest.raises(ValueError):
        aggregate_runs([{"auc": 0.7}, {"gauc": 0.6}])
    assert format_mean_sd({"mean": 0.79123, "sd": 0.00118}) == "0.7912 ± 0.0012"
    assert format_mean_sd({"mean": 0.5, "sd": 0.0}, digits=2) == "0.50 ± 0.00"


def _record() -> dict:
    rows = [
        {
            "name": "din",
            "metrics": aggregate_runs([{"auc": 0.79, "gauc": 0.7}, {"auc": 0.81, "gauc": 0.72}]),
            "train_samples_per_s": 12345.6,
            "wall_s": 61.25,
        },
        {"name": "popularity", "metrics": aggregate_runs([{"auc": 0.6}]), "train_samples_per_s": None, "wall_s": 1.0},
    ]
    return benchmark_record("ctr-ml-100k", "reaseq bench ctr", "ml-100k", {"name": "ctr", "min_hist": 1}, [1, 2], rows)


def test_benchmark_record_and_markdown_table(tmp_path: Path) -> None:
    record = _record()
    assert record["date"].endswith("+00:00") and record["seeds"] == [1, 2]
    table = markdown_table(record, ["auc", "gauc"])
    assert table.splitlines() == [
        "| model | auc | gauc | train samples/s | wall s |",
        "|---|---:|---:|---:|---:|",
        "| din | 0.8000 ± 0.0141 | 0.7100 ± 0.0141 | 12,346 | 61.2 |",
        "| popularity | 0.6000 ± 0.0000 | — | — | 1.0 |",
    ]
    record["rows"][1]["metrics"]["gauc"] = mean_sd([float("nan")])
    path = write_json_atomic(tmp_path / "sub" / "bench.json", record)
    loaded = json.loads(path.read_text())
    assert loaded["rows"][0]["metrics"]["auc"]["values"] == [0.79, 0.81]
    assert loaded["rows"][1]["metrics"]["gauc"]["mean"] is None  # NaN is written as null
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temp file left behind
    with pytest.raises(ValueError):
        benchmark_record("b", "c", "d", "p", [0], [{"name": "x"}])


def test_write_report_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 300
    slices = ctr_slices(
        rng.integers(0, 20, n), rng.integers(0, 2, n), rng.random(n), rng.integers(1, 60, n), rng.integers(0, 200, n),
        history_edges=[5, 20], popularity_edges=[10, 100],
    )
    metrics = aggregate_runs([{"auc": 0.7, "logloss": 0.6}, {"auc": 0.72, "logloss": 0.58}])
    curves = {"train_loss": [0.7, 0.6, 0.55], "valid_auc": [0.65, 0.7, 0.71]}
    path = write_report(tmp_path / "rep", "DIN on ml-100k", metrics, slices, curves, {"name": "ctr"}, notes="a < b")
    out = path.parent
    assert path.name == "report.md"
    assert {p.name for p in out.iterdir()} == {
        "report.md", "report.html", "curves.png", "slice_history_length.png", "slice_item_popularity.png",
    }
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = path.read_text()
    assert "0.7100 ± 0.0141" in md and '"name": "ctr"' in md and "![auc by history_length](slice_history_length.png)" in md
    html = (out / "report.html").read_text()
    assert "src='curves.png'" in html and "a &lt; b" in html
    assert md.index("## Protocol") < md.index("## By history length")

    bare = write_report(tmp_path / "bare", "t", {"hr@10": 0.1}, None, None, "leave-one-out")
    assert {p.name for p in bare.parent.iterdir()} == {"report.md", "report.html"}
