"""The beyond-log protocol: a measurable simulation of the log boundary.

The catalogue is split by genre into on-platform and off-platform items. A random share of the users are
*target* users: only their on-platform behaviour is visible; their off-platform behaviour is hidden from
every model. The other (*world*) users are fully visible, on and off platform: they are the world corpus
from which a generator learns how on-platform tastes continue off platform. The task: from a target
user's on-platform sequence, produce K off-platform items; score them against the user's hidden
off-platform set with recall@K and NDCG@K (every hidden item is relevant; the full off-platform catalogue
is the candidate set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.gbr.config import BeyondLogConfig


@dataclass
class BeyondLogSplit:
    """Who is a target, what every model may see, and what is hidden."""

    off_platform: np.ndarray  # bool [n_items + 1]: item is off platform (index 0 False)
    target_users: np.ndarray  # int64 [T]
    world_users: np.ndarray  # int64 [W]
    visible_rows: np.ndarray  # bool [N]: world users' rows and target users' on-platform rows
    histories: list[np.ndarray]  # per target user: on-platform items in time order (the generator's input)
    hidden: list[np.ndarray]  # per target user: the distinct hidden off-platform items

    @property
    def allowed(self) -> np.ndarray:
        """The candidate set: every off-platform item."""
        return self.off_platform


def off_platform_items(data: SequenceData, genres: Sequence[str]) -> np.ndarray:
    """Bool [n_items + 1]: True for items with any genre in `genres`."""
    vocab = list(data.vocab.get("genres", []))
    unknown = [g for g in genres if g not in vocab]
    if unknown:
        raise InputError("vocab.json", "off_platform_genres", f"genres {unknown} are not in the dataset's genre vocabulary", f"choose from {vocab}" if vocab else "use a dataset with item genres")
    ids = [vocab.index(g) + 1 for g in genres]  # genre index 0 is padding
    off = np.isin(data.item_genres, ids).any(axis=1)
    off[0] = False
    return off


def build_beyond_log(data: SequenceData, cfg: BeyondLogConfig) -> BeyondLogSplit:
    """Split users into targets and world users and hide the targets' off-platform rows."""
    off = off_platform_items(data, cfg.off_platform_genres)
    row_off = off[data.items]
    n_off = np.add.reduceat(row_off.astype(np.int64), data.offsets[:-1]) if len(row_off) else np.zeros(data.n_users, np.int64)
    n_off[np.diff(data.offsets) == 0] = 0  # reduceat repeats a value for empty users
    n_on = np.diff(data.offsets) - n_off
    eligible = np.flatnonzero((n_off >= cfg.min_hidden) & (n_on >= cfg.min_history))
    n_target = min(len(eligible), round(cfg.target_user_frac * data.n_users))
    if n_target == 0:
        raise InputError(None, "off_platform_genres", f"no user has >= {cfg.min_hidden} off-platform and >= {cfg.min_history} on-platform events", "pick genres that split users' histories, or lower min_hidden / min_history")
    rng = np.random.default_rng(cfg.seed)
    target = np.sort(rng.choice(eligible, size=n_target, replace=False)).astype(np.int64)
    is_target = np.zeros(data.n_users, dtype=bool)
    is_target[target] = True
    visible = ~(is_target[data.users] & row_off)
    histories, hidden = [], []
    for user in target:
        rows = slice(data.offsets[user], data.offsets[user + 1])
        items, user_off = data.items[rows], row_off[rows]
        histories.append(items[~user_off])
        hidden.append(np.unique(items[user_off]))
    return BeyondLogSplit(off, target, np.flatnonzero(~is_target).astype(np.int64), visible, histories, hidden)


def validation_split(data: SequenceData, split: BeyondLogSplit, cfg: BeyondLogConfig, valid_user_frac: float) -> tuple[SequenceData, BeyondLogSplit]:
    """A beyond-log split inside the visible corpus, some world users playing targets: settings chosen on it never see a hidden item.

    Returns the visible corpus as data of its own (row masks of the inner split index into it) and the inner split.
    Real target users have no visible off-platform event, so they can never be drawn as inner targets.
    """
    visible = data.subset(split.visible_rows)
    inner = cfg.model_copy(update={"target_user_frac": valid_user_frac, "seed": cfg.seed + 1})
    return visible, build_beyond_log(visible, inner)


def set_metrics(recommended: np.ndarray, relevant: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """recall@k = hits / min(k, |relevant|) and NDCG@k with binary gains, averaged over users (all relevant items count)."""
    recommended = np.asarray(recommended)[:, :k]
    if len(recommended) != len(relevant):
        raise ValueError(f"{len(recommended)} lists for {len(relevant)} relevant sets")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg, hits_total = [], [], 0
    for row, rel in zip(recommended, relevant):
        first = np.zeros(len(row), dtype=bool)
        first[np.unique(row, return_index=True)[1]] = True
        hit = np.isin(row, rel) & first  # a repeated item is one hit, not several
        ideal = min(k, len(rel))
        hits_total += int(hit.sum())
        recall.append(hit.sum() / ideal)
        ndcg.append(float(discounts[: len(row)][hit].sum() / discounts[:ideal].sum()))
    n = len(relevant)
    return {
        f"recall@{k}": float(np.mean(recall)) if n else float("nan"),
        f"ndcg@{k}": float(np.mean(ndcg)) if n else float("nan"),
        f"precision@{k}": hits_total / (n * k) if n else float("nan"),
        "n": float(n),
    }


def evaluate_lists(recommended: np.ndarray, split: BeyondLogSplit, k: int) -> dict[str, float]:
    """Set metrics of generated lists against the targets' hidden off-platform items, plus validity against the candidate set."""
    recommended = np.asarray(recommended)
    valid = (recommended >= 1) & (recommended < len(split.off_platform)) & split.off_platform[np.clip(recommended, 0, len(split.off_platform) - 1)]
    return {**set_metrics(recommended, split.hidden, k), "validity": float(valid.mean()) if valid.size else float("nan")}
