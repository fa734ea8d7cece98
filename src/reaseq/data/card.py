"""The dataset card: counts, density, histograms, split statistics and checksums, as JSON and Markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import SPLIT_NAMES, CTRSamples, TopKSplit
from reaseq.io import sha256_file, write_json, write_text

# Log-spaced bucket edges for the sequence-length and item-popularity histograms.
HISTOGRAM_EDGES = [1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 100_000]


def _histogram(values: np.ndarray) -> list[dict[str, Any]]:
    counts, _ = np.histogram(values, bins=HISTOGRAM_EDGES)
    return [{"from": lo, "to": hi - 1, "count": int(c)} for lo, hi, c in zip(HISTOGRAM_EDGES[:-1], HISTOGRAM_EDGES[1:], counts)]


def _describe(values: np.ndarray) -> dict[str, float]:
    return {"min": int(values.min()), "median": float(np.median(values)), "mean": round(float(values.mean()), 2), "max": int(values.max())}


def build_card(data: SequenceData, ctr: CTRSamples, topk: TopKSplit, sources: dict[str, Path], prepared: dict[str, Path], protocol: dict) -> dict[str, Any]:
    """Statistics that let a reader check the data and the splits without running anything."""
    n_inter = len(data.items)
    seq_len = np.diff(data.offsets)
    item_count = np.bincount(data.items, minlength=data.n_items + 1)[1:]
    ctr_stats = {
        SPLIT_NAMES[s]: {"samples": int((ctr.split == s).sum()), "positive_rate": round(float(ctr.label[ctr.split == s].mean()), 4) if (ctr.split == s).any() else None}
        for s in SPLIT_NAMES
    }
    ctr_stats["users"] = int(len(np.unique(ctr.user)))
    return {
        "dataset": data.vocab["dataset"],
        "counts": {"users": data.n_users, "items": data.n_items, "interactions": n_inter},
        "density": round(n_inter / (data.n_users * data.n_items), 6),
        "time_range": [int(data.timestamps.min()), int(data.timestamps.max())],
        "has_rating": data.vocab["has_rating"],
        "rating_levels": data.vocab["actions"],
        "sequence_length": {**_describe(seq_len), "histogram": _histogram(seq_len)},
        "item_popularity": {**_describe(item_count), "histogram": _histogram(np.maximum(item_count, 1))},
        "genres": data.vocab["genres"],
        "user_features": {name: len(values) for name, values in data.vocab["user_features"].items()},
        "protocols": {
            "ctr": ctr_stats,
            "topk": {"users": int(len(topk.users)), "interactions": int(len(topk.data.items)), "train_events": int(topk.train_mask().sum()), "valid_targets": int(len(topk.users)), "test_targets": int(len(topk.users))},
        },
        "protocol_config": protocol,
        "checksums": {
            "sources": {role: {"file": str(p), "sha256": sha256_file(p)} for role, p in sources.items() if p.is_file()},
            "prepared": {name: sha256_file(p) for name, p in prepared.items()},
        },
    }


def card_markdown(card: dict[str, Any]) -> str:
    """A human-readable rendering of the card."""
    c, ctr, topk = card["counts"], card["protocols"]["ctr"], card["protocols"]["topk"]
    lines = [
        f"# Dataset card: {card['dataset']}",
        "",
        f"{c['users']:,} users, {c['items']:,} items, {c['interactions']:,} interactions; density {card['density']:.4%}.",
        "",
        "| statistic | min | median | mean | max |",
        "|---|---|---|---|---|",
    ]
    for key in ("sequence_length", "item_popularity"):
        s = card[key]
        lines.append(f"| {key.replace('_', ' ')} | {s['min']} | {s['median']} | {s['mean']} | {s['max']} |")
    lines += ["", "## Histograms", "", "| bucket | users by sequence length | items by popularity |", "|---|---|---|"]
    for seq_bucket, pop_bucket in zip(card["sequence_length"]["histogram"], card["item_popularity"]["histogram"]):
        lines.append(f"| {seq_bucket['from']}-{seq_bucket['to']} | {seq_bucket['count']} | {pop_bucket['count']} |")
    lines += [
        "",
        "## Protocol splits",
        "",
        "| protocol | train | valid | test | users |",
        "|---|---|---|---|---|",
        f"| ctr (samples; positive rate) | {ctr['train']['samples']:,} ({ctr['train']['positive_rate']}) | {ctr['valid']['samples']:,} ({ctr['valid']['positive_rate']}) | {ctr['test']['samples']:,} ({ctr['test']['positive_rate']}) | {ctr['users']:,} |",
        f"| topk (events / targets) | {topk['train_events']:,} | {topk['valid_targets']:,} | {topk['test_targets']:,} | {topk['users']:,} |",
        "",
        "## Checksums (sha256)",
        "",
    ]
    lines += [f"- source {role}: `{v['file']}` {v['sha256']}" for role, v in card["checksums"]["sources"].items()]
    lines += [f"- prepared {name}: {digest}" for name, digest in card["checksums"]["prepared"].items()]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], folder: Path) -> None:
    """Write card.json and card.md."""
    write_json(folder / "card.json", card)
    write_text(folder / "card.md", card_markdown(card))
