"""Batches as tensors gathered from flat index arrays: no per-sample Python objects on the hot path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import CTRSamples

if TYPE_CHECKING:
    from reaseq.gbr.augment import InferredBehaviours

Batch = dict[str, torch.Tensor]


def history_window(offsets: torch.Tensor, user: torch.Tensor, pos: torch.Tensor, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the `max_len` events before `pos` of each user, left-padded; returns (rows [B, L], valid [B, L])."""
    steps = torch.arange(-max_len, 0, dtype=torch.long)  # oldest ... most recent
    rows = pos.unsqueeze(1) + steps  # [B, L]
    valid = rows >= offsets[user].unsqueeze(1)
    return rows.clamp(min=0), valid


class CTRBatcher:
    """Turns CTR samples into batches: target item, user, label and the history before the event.

    With `inferred` (GBR's table as per-user arrays: items [U, K], confidence [U, K], as_of [U]) a batch also
    holds the user's inferred behaviours, blanked (item 0) for samples before the user's as_of row. Batches are
    gathered on CPU and handed over on `device`.
    """

    def __init__(self, data: SequenceData, max_len: int, inferred: InferredBehaviours | None = None, device: str | torch.device = "cpu") -> None:
        self.max_len = max_len
        self.device = torch.device(device)
        self.offsets = torch.from_numpy(data.offsets)
        self.items = torch.from_numpy(data.items)
        self.actions = torch.from_numpy(data.actions)
        self.inferred = None
        if inferred is not None:
            self.inferred = (torch.from_numpy(inferred.items), torch.from_numpy(inferred.confidence), torch.from_numpy(inferred.as_of))

    def gather(self, pos: torch.Tensor, user: torch.Tensor, item: torch.Tensor, label: torch.Tensor) -> Batch:
        """One batch from sample columns already in tensors."""
        rows, valid = history_window(self.offsets, user, pos, self.max_len)
        batch = {
            "user": user,
            "item": item,
            "label": label,
            "hist_items": self.items[rows].masked_fill(~valid, 0),  # [B, L]
            "hist_actions": self.actions[rows].masked_fill(~valid, 0),  # [B, L]
        }
        if self.inferred is not None:
            items, confidence, as_of = self.inferred
            usable = (pos >= as_of[user]).unsqueeze(1)  # [B, 1]
            batch["inf_items"] = items[user].masked_fill(~usable, 0)  # [B, K]
            batch["inf_conf"] = confidence[user].masked_fill(~usable, 0.0)  # [B, K]
        if self.device.type != "cpu":
            batch = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        return batch

    def iterate(self, samples: CTRSamples, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None, part: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Batches over all samples, in order or shuffled with `generator`; with `part` = (rank, world) only that rank's share (see shard_order)."""
        pos, user = torch.from_numpy(samples.pos), torch.from_numpy(samples.user)
        item, label = torch.from_numpy(samples.item), torch.from_numpy(samples.label)
        order = torch.randperm(len(pos), generator=generator) if shuffle else torch.arange(len(pos))
        if part is not None:
            order = shard_order(order, *part)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.gather(pos[idx], user[idx], item[idx], label[idx])


def shard_order(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s share of `order`: every `world`-th entry from `rank` on, after dropping the last len % world entries."""
    # Equal shares keep the ranks in lockstep (a rank with one batch more would wait forever in DDP's all-reduce);
    # strided rather than contiguous, so the ranks' j-th batches together are the j-th batch of a single process.
    usable = len(order) - len(order) % world
    return order[rank:usable:world]


def history_lengths(data: SequenceData, samples: CTRSamples) -> np.ndarray:
    """Number of earlier events of the user at each sample (before truncation to max_len)."""
    return samples.pos - data.offsets[samples.user]


def item_train_counts(data: SequenceData, train_rows: np.ndarray) -> np.ndarray:
    """How often each item occurs among the training events (index = item id)."""
    return np.bincount(data.items[train_rows], minlength=data.n_items + 1)
