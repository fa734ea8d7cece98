"""CTR metrics (AUC, GAUC, logloss) and full-catalogue top-K metrics (HR, NDCG, MRR)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

# Probabilities are clipped to [eps, 1 - eps] so a confident mistake costs a large but finite loss.
LOGLOSS_EPS = 1e-7
# Column 0 of every score matrix is the padding item, never a real candidate.
PADDING_ITEM = 0

IndexLists = Sequence[Sequence[int]] | Sequence[torch.Tensor]


def _binary_labels(labels: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(labels)
    if array.size and np.any((array != 0) & (array != 1)):
        raise ValueError("labels must be 0/1 (or boolean)")
    return array.astype(np.float64, copy=False)


def _finite_scores(scores: np.ndarray | Sequence[float], n: int) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"scores have shape {array.shape}, labels have length {n}")
    if np.isnan(array).any():
        raise ValueError("scores contain NaN")
    return array


def _group_mean_positions(new_group: np.ndarray) -> np.ndarray:
    """Mean 0-based position of each element's group in a sorted array (ties share the average)."""
    n = new_group.size
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    group_of = np.cumsum(new_group) - 1
    return ((starts + ends - 1) / 2.0)[group_of]


def auc(labels: np.ndarray | Sequence[float], scores: np.ndarray | Sequence[float]) -> float:
    """ROC AUC via the Mann-Whitney rank sum (tied scores count half); NaN when only one class is present."""
    y = _binary_labels(labels)
    s = _finite_scores(scores, y.size)
    n_pos = float(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    sorted_scores = s[order]
    new_group = np.empty(y.size, dtype=bool)
    new_group[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_group[1:])
    ranks = _group_mean_positions(new_group) + 1.0  # 1-based, tie-averaged
    pos_rank_sum = float(ranks @ y[order])
    return (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _user_codes(users: np.ndarray) -> np.ndarray:
    # lexsort needs orderable keys; ids that are not plain integers are factorised first.
    if users.dtype.kind in "iub":
        return users
    return np.unique(users, return_inverse=True)[1].reshape(-1)


def gauc(
    users: np.ndarray | Sequence[object],
    labels: np.ndarray | Sequence[float],
    scores: np.ndarray | Sequence[float],
) -> float:
    """Per-user AUC averaged with weights = the user's impressions; single-class users are skipped (NaN if none left)."""
    y = _binary_labels(labels)
    s = _finite_scores(scores, y.size)
    u = _user_codes(np.asarray(users))
    if u.shape != (y.size,):
        raise ValueError(f"users have shape {u.shape}, labels have length {y.size}")
    if y.size == 0:
        return float("nan")
    order = np.lexsort((s, u))  # by user, then by score within the user
    u, s, y = u[order], s[order], y[order]

    new_user = np.empty(y.size, dtype=bool)
    new_user[0] = True
    np.not_equal(u[1:], u[:-1], out=new_user[1:])
    new_tie = new_user.copy()
    new_tie[1:] |= s[1:] != s[:-1]

    user_starts = np.flatnonzero(new_user)
    user_of = np.cumsum(new_user) - 1
    # Tie-averaged rank inside the user's own block, 1-based.
    ranks = _group_mean_positions(new_tie) - user_starts[user_of] + 1.0

    n_user = np.diff(np.append(user_starts, y.size)).astype(np.float64)
    n_pos = np.add.reduceat(y, user_starts)
    pos_rank_sum = np.add.reduceat(ranks * y, user_starts)
    n_neg = n_user - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    user_auc = (pos_rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2.0) / (n_pos[valid] * n_neg[valid])
    weights = n_user[valid]
    return float(user_auc @ weights / weights.sum())


def logloss(
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    eps: float = LOGLOSS_EPS,
) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]; NaN for no samples."""
    y = _binary_labels(labels)
    p = np.clip(_finite_scores(probs, y.size), eps, 1.0 - eps)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def ctr_metrics(
    users: np.ndarray | Sequence[object],
    labels: np.ndarray | Sequence[float],
    probs: np.ndarray | Sequence[float],
    eps: float = LOGLOSS_EPS,
) -> dict[str, float]:
    """The CTR metric family: auc, gauc, logloss, n (samples) and pos_rate."""
    y = _binary_labels(labels)
    return {
        "auc": auc(y, probs),
        "gauc": gauc(users, y, probs),
        "logloss": logloss(y, probs, eps),
        "n": float(y.size),
        "pos_rate": float(y.mean()) if y.size else float("nan"),
    }


def _exclusion_mask(exclude: torch.Tensor | IndexLists, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """A bool [B, n_items] mask from a bool mask, a 0-padded index matrix, or ragged index lists."""
    if isinstance(exclude, torch.Tensor) and exclude.dtype == torch.bool:
        if exclude.shape != shape:
            raise ValueError(f"exclude mask has shape {tuple(exclude.shape)}, scores have {tuple(shape)}")
        return exclude.to(device)
    if isinstance(exclude, torch.Tensor):
        index = exclude.to(device=device, dtype=torch.long)
    else:
        rows = [torch.as_tensor(row, dtype=torch.long).reshape(-1) for row in exclude]
        if len(rows) != shape[0]:
            raise ValueError(f"exclude has {len(rows)} rows, scores have {shape[0]}")
        # Padding with the padding item is harmless: that column is excluded anyway.
        index = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PADDING_ITEM).to(device)
    if index.dim() != 2 or index.shape[0] != shape[0]:
        raise ValueError(f"exclude index matrix must be [B, L] with B={shape[0]}, got {tuple(index.shape)}")
    if index.numel() and (index.min() < 0 or index.max() >= shape[1]):
        raise ValueError(f"exclude holds item ids outside [0, {shape[1]})")
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    return mask.scatter_(1, index, True)


@torch.no_grad()
def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | IndexLists | None = None,
    ties: Literal["optimistic", "pessimistic"] = "optimistic",
) -> torch.Tensor:
    """0-based rank of each target among all catalogue items = number of candidates scored strictly higher.

    With the default `ties="optimistic"` candidates tied with the target are not counted (the target
    wins ties); `"pessimistic"` counts them, which guards against degenerate constant-score models.
    Column 0 (padding) and the items in `exclude` are never candidates. The target itself is never
    excluded, so an item the user saw before still counts as a hit.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, n_items], got {tuple(scores.shape)}")
    targets = targets.to(device=scores.device, dtype=torch.long).reshape(-1)
    if targets.shape[0] != scores.shape[0]:
        raise ValueError(f"{targets.shape[0]} targets for {scores.shape[0]} score rows")
    if targets.numel() and (targets.min() <= PADDING_ITEM or targets.max() >= scores.shape[1]):
        raise ValueError(f"targets must be real item ids in [1, {scores.shape[1]})")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")
    target_scores = scores.gather(1, targets.unsqueeze(1))
    if ties == "optimistic":
        higher = scores > target_scores
    elif ties == "pessimistic":
        higher = scores >= target_scores
        higher[torch.arange(targets.shape[0], device=scores.device), targets] = False
    else:
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")
    higher[:, PADDING_ITEM] = False
    if exclude is not None:
        mask = _exclusion_mask(exclude, scores.shape, scores.device)
        higher &= ~mask
    return higher.sum(dim=1)


def topk_metrics(ranks: np.ndarray | Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """hr@k, ndcg@k, mrr@k per k plus full mrr and n, for one relevant item at 0-based `ranks`."""
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if np.any(r < 0):
        raise ValueError("ranks must be non-negative")
    out: dict[str, float] = {}
    empty = r.size == 0
    reciprocal = 1.0 / (r + 1.0)
    gain = 1.0 / np.log2(r + 2.0)
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = float("nan") if empty else float(hit.mean())
        out[f"ndcg@{k}"] = float("nan") if empty else float(np.where(hit, gain, 0.0).mean())
        out[f"mrr@{k}"] = float("nan") if empty else float(np.where(hit, reciprocal, 0.0).mean())
    out["mrr"] = float("nan") if empty else float(reciprocal.mean())
    out["n"] = float(r.size)
    return out
