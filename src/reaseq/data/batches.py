"""Batches as tensors gathered from flat index arrays: no per-sample Python objects on the hot path."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import CTRSamples

Batch = dict[str, torch.Tensor]


def history_window(offsets: torch.Tensor, user: torch.Tensor, pos: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the `max_len` events before `pos` of each user, left-padded; returns (rows [B, L], valid [B, L])."""
    steps = torch.arange(-max_len, 0, dtype=torch.long)  # oldest ... most recent
    rows = pos.unsqueeze(1) + steps  # [B, L]
    valid = rows >= offsets[user].unsqueeze(1)
    return rows.clamp(min=0), valid


class CTRBatcher:
    """Turns CTR samples into batches: target item, user, label and the history before the event."""

    def __init__(self, data: SequenceData, max_len: int) -> None:
        self.max_len = max_len
        self.offsets = torch.from_numpy(data.offsets)
        self.items = torch.from_numpy(data.items)
        self.actions = torch.from_numpy(data.actions)

    def gather(self, pos: torch.Tensor, user: torch.Tensor, item: torch.Tensor, label: torch.Tensor) -> Batch:
        """One batch from sample columns already in tensors."""
        rows, valid = history_window(self.offsets, user, pos, self.max_len)
        return {
            "user": user,
            "item": item,
            "label": label,
            "hist_items": self.items[rows].masked_fill(~valid, 0),  # [B, L]
            "hist_actions": self.actions[rows].masked_fill(~valid, 0),  # [B, L]
        }

    def iterate(self, samples: CTRSamples, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Batches over all samples, in order or shuffled with `generator`."""
        pos, user = torch.from_numpy(samples.pos), torch.from_numpy(samples.user)
        item, label = torch.from_numpy(samples.item), torch.from_numpy(samples.label)
        order = torch.randperm(len(pos), generator=generator) if shuffle else torch.arange(len(pos))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.gather(pos[idx], user[idx], item[idx], label[idx])


def history_lengths(data: SequenceData, samples: CTRSamples) -> np.ndarray:
    """Number of earlier events of the user at each sample (before truncation to max_len)."""
    return samples.pos - data.offsets[samples.user]


def item_train_counts(data: SequenceData, train_rows: np.ndarray) -> np.ndarray:
    """How often each item occurs among the training events (index = item id)."""
    return np.bincount(data.items[train_rows], minlength=data.n_items + 1)
