"""Metrics per bucket of user history length and of target item popularity.

Bucket convention: edges are inclusive upper bounds. Edges [5, 20, 50] give the buckets
"1-5" (1 <= v <= 5), "6-20", "21-50" and "51+" (v > 50). Values below 1 (a user with no history,
an item never seen in the training split) go to a separate "0" bucket, listed first, because
cold users and items are exactly what the slices are meant to expose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import polars as pl

from reaseq.config import EvaluateConfig
from reaseq.evaluate.metrics import LOGLOSS_EPS, ctr_metrics, topk_metrics

ZERO_BUCKET = "0"
HISTORY_SLICE = "history_length"
POPULARITY_SLICE = "item_popularity"

MetricFn = Callable[[pl.DataFrame], dict[str, float]]
SliceRows = list[dict[str, Any]]


def _check_edges(edges: Sequence[int]) -> list[int]:
    values = [int(e) for e in edges]
    if not values or values[0] < 1 or any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"bucket edges must be positive and strictly increasing, got {list(edges)}")
    return values


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Labels of the buckets defined by inclusive upper `edges`, e.g. [5, 20] -> ["1-5", "6-20", "21+"]."""
    values = _check_edges(edges)
    labels = []
    low = 1
    for high in values:
        labels.append(str(low) if low == high else f"{low}-{high}")
        low = high + 1
    labels.append(f"{low}+")
    return labels


def assign_buckets(values: np.ndarray | Sequence[int], edges: Sequence[int]) -> pl.Series:
    """Bucket label of each value as an ordered polars Enum ("0" first, then bucket_labels(edges))."""
    labels = [ZERO_BUCKET, *bucket_labels(edges)]
    v = np.asarray(values)
    # side="left" makes an edge value land in the bucket it closes (inclusive upper bound).
    index = np.searchsorted(np.asarray(_check_edges(edges)), v, side="left") + 1
    index[v < 1] = 0
    return pl.Series(np.asarray(labels, dtype=object)[index], dtype=pl.Enum(labels))


def slice_metrics(frame: pl.DataFrame, by: str, metric_fn: MetricFn) -> SliceRows:
    """metric_fn on each non-empty bucket of column `by`: [{"bucket", "count", "metrics"}] in bucket order."""
    rows: SliceRows = []
    # Sorting an Enum column follows its category order, so buckets come out from small to large.
    for value in frame.get_column(by).unique().sort().to_list():
        part = frame.filter(pl.col(by) == value)
        rows.append({"bucket": str(value), "count": part.height, "metrics": metric_fn(part)})
    return rows


def _edges(history_edges: Sequence[int] | None, popularity_edges: Sequence[int] | None) -> tuple[list[int], list[int]]:
    defaults = EvaluateConfig()
    return (
        list(defaults.history_buckets if history_edges is None else history_edges),
        list(defaults.popularity_buckets if popularity_edges is None else popularity_edges),
    )


def _with_slices(
    columns: dict[str, Any],
    hist_len: np.ndarray | Sequence[int],
    item_pop: np.ndarray | Sequence[int],
    history_edges: Sequence[int],
    popularity_edges: Sequence[int],
) -> pl.DataFrame:
    frame = pl.DataFrame(columns)
    return frame.with_columns(
        assign_buckets(hist_len, history_edges).alias(HISTORY_SLICE),
        assign_buckets(item_pop, popularity_edges).alias(POPULARITY_SLICE),
    )


def ctr_slices(
    users: np.ndarray | Sequence[object],
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    hist_len: np.ndarray | Sequence[int],
    item_pop: np.ndarray | Sequence[int],
    history_edges: Sequence[int] | None = None,
    popularity_edges: Sequence[int] | None = None,
    eps: float = LOGLOSS_EPS,
) -> dict[str, SliceRows]:
    """CTR metrics by user-history-length bucket and by target-item train-popularity bucket."""
    h_edges, p_edges = _edges(history_edges, popularity_edges)
    frame = _with_slices(
        {"user": np.asarray(users), "label": np.asarray(labels), "prob": np.asarray(probs, dtype=np.float64)},
        hist_len,
        item_pop,
        h_edges,
        p_edges,
    )

    def metric_fn(part: pl.DataFrame) -> dict[str, float]:
        return ctr_metrics(part["user"].to_numpy(), part["label"].to_numpy(), part["prob"].to_numpy(), eps)

    return {
        HISTORY_SLICE: slice_metrics(frame, HISTORY_SLICE, metric_fn),
        POPULARITY_SLICE: slice_metrics(frame, POPULARITY_SLICE, metric_fn),
    }


def topk_slices(
    ranks: np.ndarray | Sequence[int],
    hist_len: np.ndarray | Sequence[int],
    item_pop: np.ndarray | Sequence[int],
    ks: Sequence[int],
    history_edges: Sequence[int] | None = None,
    popularity_edges: Sequence[int] | None = None,
) -> dict[str, SliceRows]:
    """Top-K metrics by user-history-length bucket and by target-item train-popularity bucket."""
    h_edges, p_edges = _edges(history_edges, popularity_edges)
    frame = _with_slices({"rank": np.asarray(ranks, dtype=np.int64)}, hist_len, item_pop, h_edges, p_edges)

    def metric_fn(part: pl.DataFrame) -> dict[str, float]:
        return topk_metrics(part["rank"].to_numpy(), ks)

    return {
        HISTORY_SLICE: slice_metrics(frame, HISTORY_SLICE, metric_fn),
        POPULARITY_SLICE: slice_metrics(frame, POPULARITY_SLICE, metric_fn),
    }
