"""The cold-start protocol on top of `ctr`: a random share of the catalogue is held out of training entirely.

Choice made here (and why): the logs stay as they were recorded, so validation and test histories still show the
held-out ("cold") items where users met them; but nothing of a cold item may be learned from training data:

* training samples whose target is a cold item are dropped;
* cold items are masked out of the training histories (the ranker's batcher replaces them by padding, see
  `run_ctr(train_hidden_items=...)`), so the ID part never receives a gradient for them;
* the rows that inform RER's collaborative side and the popularity gate exclude the cold items' events, so
  their gate is count 0 / (0 + pivot) = 0 and they are represented by knowledge alone.

Evaluation: the valid/test samples whose target is a cold item (`ColdSplit.eval_mask`), beside the full splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import TEST, TRAIN, VALID, CTRSamples
from reaseq.errors import ConfigError


@dataclass
class ColdSplit:
    """CTR samples without cold training targets, the cold items and the masks that select their evaluation samples."""

    samples: CTRSamples  # train samples of cold targets removed; valid and test untouched
    cold_items: np.ndarray  # int64 sorted item ids held out of training
    is_cold: np.ndarray  # bool [n_items + 1]
    eval_mask: np.ndarray  # bool over `samples`: valid or test samples whose target is cold

    def test_mask(self) -> np.ndarray:
        """Bool over `samples`: the test samples whose target is cold."""
        return self.eval_mask & (self.samples.split == TEST)

    def valid_mask(self) -> np.ndarray:
        """Bool over `samples`: the validation samples whose target is cold."""
        return self.eval_mask & (self.samples.split == VALID)


def pick_cold_items(n_items: int, frac: float, seed: int) -> np.ndarray:
    """A seeded random `frac` of the item ids 1..n_items (at least one), sorted."""
    if not 0.0 < frac < 1.0:
        raise ConfigError(None, "cold_item_frac", f"must lie strictly between 0 and 1, got {frac}", "hold out e.g. 0.1 of the items")
    n_cold = max(1, round(frac * n_items))
    return np.sort(np.random.default_rng(seed).choice(np.arange(1, n_items + 1), size=n_cold, replace=False)).astype(np.int64)


def cold_split(data: SequenceData, samples: CTRSamples, cold_item_frac: float = 0.1, seed: int = 0) -> ColdSplit:
    """Hold out a seeded random `cold_item_frac` of the items: drop their training samples, mark their eval samples."""
    cold = pick_cold_items(data.n_items, cold_item_frac, seed)
    is_cold = np.zeros(data.n_items + 1, bool)
    is_cold[cold] = True
    target_cold = is_cold[samples.item]
    kept = samples.take(~(target_cold & (samples.split == TRAIN)))
    return ColdSplit(kept, cold, is_cold, is_cold[kept.item] & (kept.split != TRAIN))


def warm_rows(data: SequenceData, rows: np.ndarray, is_cold: np.ndarray) -> np.ndarray:
    """Bool [N]: the given training rows (a mask) minus the events of cold items, for RER's collaborative side and gate."""
    return np.asarray(rows, bool) & ~is_cold[data.items]
