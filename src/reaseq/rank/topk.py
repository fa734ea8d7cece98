"""Train and evaluate next-item models on the `topk` protocol (full-catalogue ranking)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from reaseq.config import RunConfig
from reaseq.data.batches import history_window, item_train_counts
from reaseq.data.protocols import TEST, VALID, TopKSplit
from reaseq.evaluate.metrics import target_ranks, topk_metrics
from reaseq.evaluate.slices import topk_slices
from reaseq.rank.ctr import seed_everything
from reaseq.rank.fit import FitResult, fit
from reaseq.rank.models.popularity import PopularityTopK
from reaseq.rank.models.sasrec import SASRec, build_sasrec


def training_windows(split: TopKSplit, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut each user's training events into windows of max_len + 1 rows, newest first; returns (end, start) rows."""
    starts = split.data.offsets[split.users]
    lengths = split.valid_pos - starts  # training events per user
    n_windows = np.maximum(0, np.ceil((lengths - 1) / max_len)).astype(np.int64)
    user_of = np.repeat(np.arange(len(split.users)), n_windows)
    step = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = split.valid_pos[user_of] - step * max_len  # exclusive
    start = np.maximum(starts[user_of], end - max_len - 1)
    return end, start


def sasrec_epoch(
    model: SASRec, split: TopKSplit, windows: tuple[np.ndarray, np.ndarray], optimizer: torch.optim.Optimizer, cfg: RunConfig, generator: torch.Generator, epoch: int,
    rewrite: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, int]:
    """One pass over the windows, next-item cross-entropy over the full catalogue at every real position.

    `rewrite` maps each batch of left-padded windows [B, L + 1] to the rows actually trained on (e.g. reordered).
    """
    items = torch.from_numpy(split.data.items)
    end, start = (torch.from_numpy(a) for a in windows)
    width = cfg.protocol.topk.max_len + 1
    order = torch.randperm(len(end), generator=generator)
    batch_size = max(1, cfg.train.batch_size // cfg.protocol.topk.max_len)  # batch_size counts predicted events
    device = model.item_embedding.weight.device  # windows are cut on CPU, then handed to wherever the model lives
    total, targets_seen, batches = 0.0, 0, 0
    progress = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch}", disable=not cfg.train.progress, leave=False)
    for offset in progress:
        idx = order[offset : offset + batch_size]
        rows = end[idx].unsqueeze(1) - width + torch.arange(width)  # [B, L + 1]
        valid = rows >= start[idx].unsqueeze(1)
        seq = items[rows.clamp(min=0)].masked_fill(~valid, 0)
        if rewrite is not None:
            seq = rewrite(seq)
        inputs, targets = (x.to(device) for x in (seq[:, :-1], seq[:, 1:]))
        predict = (inputs > 0) & (targets > 0)  # [B, L]
        hidden = model.hidden(inputs)[predict]  # [n, D]
        loss = F.cross_entropy(model.logits(hidden), targets[predict])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        batches += 1
        targets_seen += int(predict.sum())
    return total / max(batches, 1), targets_seen


def rank_targets(score_fn: Any, split: TopKSplit, which: int, cfg: RunConfig) -> np.ndarray:
    """0-based full-catalogue rank of each user's target of the VALID or TEST split."""
    data, max_len = split.data, cfg.protocol.topk.max_len
    offsets, items = torch.from_numpy(data.offsets), torch.from_numpy(data.items)
    targets_pos = torch.from_numpy(split.targets(which))
    users = torch.from_numpy(split.users)
    ranks = []
    step = cfg.train.eval_batch_size
    for start in range(0, len(users), step):
        user, pos = users[start : start + step], targets_pos[start : start + step]
        rows, valid = history_window(offsets, user, pos, max_len)
        seq = items[rows].masked_fill(~valid, 0)
        target = items[pos]
        scores = score_fn(seq)
        seen = None
        if cfg.protocol.topk.exclude_seen:
            # Every earlier item of the user, not only the last max_len; target_ranks never excludes the target.
            longest = int((pos - offsets[user]).max().clamp(min=1))
            full_rows, full_valid = history_window(offsets, user, pos, longest)
            seen = items[full_rows].masked_fill(~full_valid, 0)
        ranks.append(target_ranks(scores, target, exclude=seen, ties="pessimistic"))
    return torch.cat(ranks).cpu().numpy()


def topk_report(split: TopKSplit, ranks: np.ndarray, which: int, item_pop: np.ndarray, cfg: RunConfig) -> dict[str, Any]:
    """Headline top-K metrics and slices for one split."""
    pos = split.targets(which)
    hist_len = pos - split.data.offsets[split.users]
    return {
        "metrics": topk_metrics(ranks, cfg.protocol.topk.ks),
        "slices": topk_slices(ranks, hist_len, item_pop[split.data.items[pos]], cfg.protocol.topk.ks, cfg.evaluate.history_buckets, cfg.evaluate.popularity_buckets),
    }


def run_topk(split: TopKSplit, cfg: RunConfig, seed: int, out_dir: Path | None = None) -> dict[str, Any]:
    """Fit on the training events, select on the valid targets (NDCG@first k), report valid and test."""
    started = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    generator = seed_everything(seed)
    train_rows = np.flatnonzero(split.train_mask())
    item_pop = item_train_counts(split.data, train_rows)
    fit_result = FitResult()
    select_metric = f"ndcg@{cfg.protocol.topk.ks[0]}"

    if cfg.model.name == "popularity":
        model = PopularityTopK(split.data.n_items).fit(split.data.items[train_rows])
        score_fn = lambda seq: model.scores(len(seq))  # noqa: E731
    elif cfg.model.name == "sasrec":
        net = build_sasrec(split.data, cfg.protocol.topk.max_len, cfg.model).to(cfg.train.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        windows = training_windows(split, cfg.protocol.topk.max_len)

        def score_fn(seq: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return net(seq.to(cfg.train.device))

        def validate() -> float:
            return topk_metrics(rank_targets(score_fn, split, VALID, cfg), cfg.protocol.topk.ks)[select_metric]

        checkpoint = out_dir / "model.pt" if out_dir else None
        fit_result = fit(net, lambda epoch: sasrec_epoch(net, split, windows, optimizer, cfg, generator, epoch), validate, cfg.train, checkpoint)
    else:
        raise ValueError(f"model '{cfg.model.name}' is not a topk model; use popularity or sasrec")

    valid_ranks = rank_targets(score_fn, split, VALID, cfg)
    test_ranks = rank_targets(score_fn, split, TEST, cfg)
    return {
        "model": cfg.model.name,
        "seed": seed,
        "select_metric": select_metric,
        "valid": topk_report(split, valid_ranks, VALID, item_pop, cfg),
        "test": topk_report(split, test_ranks, TEST, item_pop, cfg),
        "best_epoch": fit_result.best_epoch,
        "epochs_run": fit_result.epochs_run,
        "curves": fit_result.curves,
        "train_samples": fit_result.train_samples,
        "train_samples_per_s": fit_result.train_samples_per_s,
        "train_seconds": fit_result.train_seconds,
        "wall_s": time.perf_counter() - started,
    }
