"""Does GBR's inferred list say anything about the `ctr` label? Positive rate of samples whose target is in the list.

    python benchmarks/gbr_overlap.py --run-dir runs/abl-gpu    # a run whose `gbr` step has written its table

For every ctr sample at or after its user's `as_of` (the rows the ranker may show the inferred behaviours to), the
share of positives when the target item is among the user's inferred items and when it is not, per split, and the
AUC that membership (or the target's confidence) alone reaches on the label. It reads
the run's files only (no training): the table of `reaseq gbr` and the prepared samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line  # noqa: E402

from reaseq.gbr.augment import read_inferred_table  # noqa: E402
from reaseq.gbr.step import GBR_DIR, TABLE_FILE  # noqa: E402
from reaseq.io import write_json  # noqa: E402
from reaseq.pipeline import CTR_SAMPLES_FILE, DATA_DIR  # noqa: E402

SPLITS = {0: "train", 1: "valid", 2: "test"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run folder with data/ctr_samples.parquet and gbr/inferred.parquet")
    parser.add_argument("--out", type=Path, default=RESULTS / "ml-1m_gbr_overlap.json")
    return parser.parse_args()


def joined_samples(samples: pl.DataFrame, table: pl.DataFrame) -> pl.DataFrame:
    """The samples after their user's as_of, with `target_in_list` and the matching slot's confidence (null if none).

    `samples` has columns pos, user, item_idx, label, split; `table` is a `reaseq gbr` table (user, slot, item, confidence, as_of).
    """
    as_of = table.group_by("user").agg(pl.col("as_of").first())
    listed = table.select("user", pl.col("item").alias("item_idx"), "confidence")
    return (
        samples.join(as_of, on="user")
        .filter(pl.col("pos") >= pl.col("as_of"))
        .join(listed, on=["user", "item_idx"], how="left")
        .with_columns(pl.col("confidence").is_not_null().alias("target_in_list"))
    )


def overlap_table(joined: pl.DataFrame) -> pl.DataFrame:
    """Per split and target-in-list: samples, positive rate, mean confidence of the matching slot."""
    return (
        joined.group_by("split", "target_in_list")
        .agg(pl.len().alias("samples"), pl.col("label").mean().alias("positive_rate"), pl.col("confidence").mean().alias("mean_confidence"))
        .sort("split", "target_in_list")
    )


def alone_auc(joined: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Per split, the AUC of the label scored by the membership alone and by the target's confidence alone (0 if not listed).

    What the feature says about the label on its own; a ranker that already scores the target well gains less from it.
    """
    out = {}
    for split, name in SPLITS.items():
        part = joined.filter(pl.col("split") == split)
        labels = part["label"].to_numpy()
        out[name] = {
            "membership_auc": float(roc_auc_score(labels, part["target_in_list"].to_numpy())),
            "confidence_auc": float(roc_auc_score(labels, part["confidence"].fill_null(0.0).to_numpy())),
        }
    return out


def main() -> None:
    args = parse_args()
    root = args.run_dir
    samples_file, table_file = root / DATA_DIR / CTR_SAMPLES_FILE, root / GBR_DIR / TABLE_FILE
    for path in (samples_file, table_file):
        if not path.is_file():
            raise SystemExit(f"{path} not found: run `reaseq prepare` and `reaseq gbr` (or `reaseq ablate` with din_gbr) for {root} first")
    samples = pl.read_parquet(samples_file, columns=["pos", "user_idx", "item_idx", "label", "split"]).rename({"user_idx": "user"})
    joined = joined_samples(samples, read_inferred_table(table_file))
    result, aucs = overlap_table(joined), alone_auc(joined)
    rows = [{**row, "split": SPLITS[row["split"]]} for row in result.to_dicts()]
    print("| split | target in list | samples | positive rate | mean confidence |\n|---|---|---:|---:|---:|")
    for row in rows:
        confidence = "" if row["mean_confidence"] is None else f"{row['mean_confidence']:.4f}"
        print(f"| {row['split']} | {row['target_in_list']} | {row['samples']:,} | {row['positive_rate']:.4f} | {confidence} |")
    print("\n| split | AUC of the membership alone | AUC of the confidence alone |\n|---|---:|---:|")
    for split, auc in aucs.items():
        print(f"| {split} | {auc['membership_auc']:.4f} | {auc['confidence_auc']:.4f} |")
    summary_file = root / GBR_DIR / "summary.json"
    write_json(args.out, {
        "benchmark": "gbr_overlap", "command": command_line(), "run_dir": str(root),
        "gbr_summary": json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() else None,
        "protocol": "ctr samples at rows >= the user's as_of (those the ranker may show GBR's table to); label = rating >= 4",
        "rows": rows,
        "alone_auc": aucs,
    })
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
