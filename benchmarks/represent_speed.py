"""Time RER's build_tables (encode + co-occurrence + alignment + semantic IDs) on ML-1M-sized input, 1 vs 2 torch threads.

    python benchmarks/represent_speed.py [--data runs/bench/ctr/run/data] [--threads 1 2]

Item texts are the real "title (year) genres" of a prepared ML-1M folder when one exists under runs/, else
3,706 synthetic movie-like strings over synthetic sequences. Every timing starts from an empty encoder cache.
Target: all ML-1M items through encoding, alignment and semantic IDs in under 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.data.protocols import TRAIN
from reaseq.evaluate.aggregate import aggregate_runs
from reaseq.evaluate.results import benchmark_record, markdown_table
from reaseq.io import write_json
from reaseq.represent.config import AlignConfig, EncoderConfig, RepresentConfig, SemanticIdConfig
from reaseq.represent.tables import build_tables

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ML1M_ITEMS, ML1M_USERS, ML1M_EVENTS_PER_USER = 3706, 6040, 165
TARGET_S = 120.0
SYNTH_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
                "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
SYNTH_WORDS = ["Night", "Return", "Love", "City", "Last", "Dark", "Story", "King", "Dead", "Star", "Man", "House",
               "Secret", "River", "Blue", "War", "Summer", "Ghost", "Dream", "Road"]


def command_line() -> str:
    """The command as typed, script path relative to the repository."""
    script = Path(sys.argv[0]).resolve()
    return " ".join(["python", str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0], *sys.argv[1:]])


def find_prepared() -> Path | None:
    """A prepared ML-1M folder under runs/ (interactions, items and the ctr split), if any."""
    for vocab in sorted((ROOT / "runs").glob("**/vocab.json")):
        folder = vocab.parent
        if json.loads(vocab.read_text(encoding="utf-8")).get("dataset") == "ml-1m" and (folder / "ctr_samples.parquet").is_file():
            return folder
    return None


def prepared_input(folder: Path) -> tuple[dict[int, str], SequenceData, np.ndarray, str]:
    """Real item texts and the ctr split's training rows (every event that is not a valid/test sample)."""
    data = load_prepared(folder)
    items = pl.read_parquet(folder / "items.parquet")
    texts = {
        int(row["item_idx"]): f"{row['title']} ({row['year']}) {', '.join(row['genres'] or [])}".replace(" (None)", "")
        for row in items.iter_rows(named=True)
    }
    samples = pl.read_parquet(folder / "ctr_samples.parquet", columns=["pos", "split"])
    train = np.ones(len(data.items), bool)
    train[samples.filter(pl.col("split") != TRAIN)["pos"].to_numpy()] = False
    return texts, data, train, f"ML-1M prepared folder {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}"


def synthetic_input(seed: int) -> tuple[dict[int, str], SequenceData, np.ndarray, str]:
    """3,706 movie-like strings and ML-1M-sized sequences where users favour a few genres."""
    rng = np.random.default_rng(seed)
    genres = [rng.choice(len(SYNTH_GENRES), size=rng.integers(1, 4), replace=False) for _ in range(ML1M_ITEMS)]
    texts = {
        i + 1: f"{' '.join(rng.choice(SYNTH_WORDS, size=rng.integers(1, 4)))} {i} ({rng.integers(1920, 2001)}) {', '.join(SYNTH_GENRES[g] for g in genres[i])}"
        for i in range(ML1M_ITEMS)
    }
    by_genre = [np.array([i + 1 for i in range(ML1M_ITEMS) if g in genres[i]]) for g in range(len(SYNTH_GENRES))]
    sequences = []
    for _ in range(ML1M_USERS):
        liked = rng.choice(len(SYNTH_GENRES), size=2, replace=False)
        pool = np.unique(np.concatenate([by_genre[g] for g in liked]))
        sequences.append(rng.choice(pool, size=min(ML1M_EVENTS_PER_USER, len(pool)), replace=False))
    items = np.concatenate(sequences).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    n = len(items)
    data = SequenceData(
        ML1M_USERS, ML1M_ITEMS, offsets, items, np.ones(n, np.int64), np.full(n, np.nan, np.float32), np.arange(n, dtype=np.int64),
        np.zeros((ML1M_ITEMS + 1, 1), np.int64), np.zeros(ML1M_ITEMS + 1, np.int64), np.zeros((ML1M_USERS, 0), np.int64),
        {"dataset": "synthetic-ml-1m-sized", "actions": ["<pad>", "click"], "genres": [], "year_min": 0, "year_max": 0, "user_features": {}, "has_rating": False},
    )
    rank = np.arange(n) - np.repeat(offsets[:-1], np.diff(offsets))
    length = np.repeat(np.diff(offsets), np.diff(offsets))
    train = rank < length - 2  # each user's last two events stand for valid and test
    return texts, data, train, "synthetic 3,706 movie-like strings"


def one_run(texts: dict[int, str], data: SequenceData, train: np.ndarray, cfg: RepresentConfig, threads: int) -> dict[str, Any]:
    """build_tables from a cold encoder cache with `threads` torch threads: timings and quality numbers."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        tables = build_tables(texts, data, train, None, cfg, Path(cache))
        wall = time.perf_counter() - started
    align, sids = tables.meta["reports"]["alignment"], tables.meta["reports"]["semantic_ids"]
    metrics = {
        "overlap_train_raw": align["overlap_train"]["raw"],
        "overlap_train_aligned": align["overlap_train"]["aligned"],
        "overlap_holdout_raw": align["overlap_holdout"]["raw"],
        "overlap_holdout_aligned": align["overlap_holdout"]["aligned"],
        "collision_rate": sids["collision_rate"],
        "level0_normalized_entropy": sids["per_level"][0]["normalized_entropy"],
    }
    return {"metrics": metrics, "timings_s": tables.meta["timings_s"], "wall_s": wall, "n_items": int(tables.has_knowledge.sum()),
            "max_dedup_index": sids.get("max_dedup_index"), "final_loss": align["final_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="a prepared ML-1M folder (default: the first one under runs/)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=RESULTS / "represent_speed.json")
    args = parser.parse_args()

    folder = args.data or find_prepared()
    texts, data, train, source = prepared_input(folder) if folder else synthetic_input(args.seed)
    cfg = RepresentConfig(
        encoder=EncoderConfig(progress=False),
        align=AlignConfig(seed=args.seed, progress=False),
        semantic_ids=SemanticIdConfig(seed=args.seed, progress=False),
    )
    print(f"input: {source}; {len(texts):,} texts, {len(data.items):,} events, {int(train.sum()):,} training rows", file=sys.stderr)
    rows = []
    for threads in args.threads:
        result = one_run(texts, data, train, cfg, threads)
        t = result["timings_s"]
        print(f"  {threads} thread(s): {result['wall_s']:.1f}s (encode {t['encode']:.1f}, co-occurrence {t['collaborative']:.1f}, "
              f"align {t['align']:.1f}, semantic ids {t['semantic_ids']:.1f})", file=sys.stderr)
        rows.append({
            "name": f"build_tables, {threads} thread(s)",
            "metrics": aggregate_runs([result["metrics"]]),
            "train_samples_per_s": result["n_items"] / result["wall_s"],  # items through the whole step per second
            "wall_s": result["wall_s"],
            "threads": threads,
            "timings_s": t,
            "under_target": result["wall_s"] < TARGET_S,
            "max_dedup_index": result["max_dedup_index"],
            "final_loss": result["final_loss"],
        })
    protocol = {"name": "represent", "input": source, "collaborative": "cooccurrence", "target_s": TARGET_S, "config": cfg.model_dump(mode="json")}
    record = benchmark_record("represent_speed", command_line(), data.vocab.get("dataset", "ml-1m"), protocol, [args.seed], rows)
    write_json(args.out, record)
    print(markdown_table(record, ["overlap_train_raw", "overlap_train_aligned", "overlap_holdout_raw", "overlap_holdout_aligned", "collision_rate"]))
    print("| threads | encode s | co-occurrence s | align s | semantic ids s | total s |\n|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        t = row["timings_s"]
        print(f"| {row['threads']} | {t['encode']:.1f} | {t['collaborative']:.1f} | {t['align']:.1f} | {t['semantic_ids']:.1f} | {row['wall_s']:.1f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
