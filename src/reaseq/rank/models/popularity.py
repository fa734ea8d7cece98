"""Popularity baselines: no personalisation, a floor every model must clear."""

from __future__ import annotations

import numpy as np
import torch

# Prior strength (pseudo-impressions) that shrinks an item's click rate towards the global rate.
CTR_SMOOTHING = 10.0


class PopularityCTR:
    """Scores a target item by its smoothed positive rate among training samples."""

    def __init__(self, n_items: int, smoothing: float = CTR_SMOOTHING) -> None:
        self.n_items = n_items
        self.smoothing = smoothing
        self.rate = np.zeros(n_items + 1, dtype=np.float64)

    def fit(self, items: np.ndarray, labels: np.ndarray) -> PopularityCTR:
        """Count impressions and positives per item."""
        shown = np.bincount(items, minlength=self.n_items + 1).astype(np.float64)
        positive = np.bincount(items, weights=labels, minlength=self.n_items + 1)
        prior = labels.mean() if len(labels) else 0.5
        self.rate = (positive + self.smoothing * prior) / (shown + self.smoothing)
        return self

    def predict(self, items: np.ndarray) -> np.ndarray:
        """Probability of a positive for each target item."""
        return self.rate[items]


class PopularityTopK:
    """Ranks the catalogue by training interaction count."""

    def __init__(self, n_items: int) -> None:
        self.counts = torch.zeros(n_items + 1)

    def fit(self, items: np.ndarray) -> PopularityTopK:
        """Count how often each item occurs in training."""
        self.counts = torch.from_numpy(np.bincount(items, minlength=len(self.counts)).astype(np.float32))
        return self

    def scores(self, batch_size: int) -> torch.Tensor:
        """The same score row for every user in a batch: [B, n_items + 1]."""
        return self.counts.unsqueeze(0).expand(batch_size, -1)
