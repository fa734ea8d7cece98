"""Generators GBR is measured against: popularity, item-kNN, EASE and an autoregressive SASRec, on the same visible corpus."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from sklearn.metrics.pairwise import cosine_similarity
from torch.nn import functional as F

from reaseq.config import (
    ModelConfig,
    ProtocolConfig,
    RunConfig,
    TopKProtocolConfig,
    TrainConfig,
)
from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import TopKSplit
from reaseq.errors import InputError
from reaseq.gbr.beyond_log import BeyondLogSplit, evaluate_lists, validation_split
from reaseq.gbr.config import BeyondLogConfig
from reaseq.gbr.infer import forbidden_items
from reaseq.gbr.model import map_embeddings
from reaseq.gbr.train import MIN_WINDOW, check_rows, interaction_matrix
from reaseq.rank.ctr import seed_everything
from reaseq.rank.fit import FitResult, fit
from reaseq.rank.models.sasrec import SASRec
from reaseq.rank.topk import sasrec_epoch, training_windows


def top_k_admissible(scores: np.ndarray, forbid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best admissible items per row of scores [U, V] (forbidden ones never chosen): (items, scores)."""
    masked = np.where(forbid, -np.inf, scores)
    top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(masked, top, axis=1), axis=1, kind="stable")
    items = np.take_along_axis(top, order, axis=1)
    return items, np.take_along_axis(masked, items, axis=1)


def popularity_lists(data: SequenceData, visible_rows: np.ndarray, histories: Sequence[np.ndarray], allowed: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k admissible items most frequent in the visible corpus, the user's own items excluded."""
    counts = np.bincount(data.items[check_rows(data, visible_rows)], minlength=data.n_items + 1).astype(np.float64)
    forbid = forbidden_items(histories, data.n_items, allowed, exclude_seen=True).numpy()
    return top_k_admissible(np.broadcast_to(counts, forbid.shape), forbid, k)


def history_matrix(histories: Sequence[np.ndarray], n_items: int) -> sparse.csr_matrix:
    """Users' histories as a sparse count matrix [U, n_items + 1] (an item twice in a history counts 2)."""
    lengths = [len(h) for h in histories]
    items = np.concatenate([np.asarray(h, np.int64) for h in histories]) if histories else np.zeros(0, np.int64)
    return sparse.csr_matrix((np.ones(len(items)), (np.repeat(np.arange(len(histories)), lengths), items)), shape=(len(histories), n_items + 1))


def itemknn_lists(data: SequenceData, visible_rows: np.ndarray, histories: Sequence[np.ndarray], allowed: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Item-kNN: score = sum of cosine co-occurrence similarities (visible corpus) to the user's history items."""
    matrix = interaction_matrix(data, np.flatnonzero(check_rows(data, visible_rows)))
    similarity = cosine_similarity(matrix.T.tocsr(), dense_output=False)  # [V, V] sparse
    scores = np.asarray((history_matrix(histories, data.n_items) @ similarity).todense())
    forbid = forbidden_items(histories, data.n_items, allowed, exclude_seen=True).numpy()
    return top_k_admissible(scores, forbid, k)


def ease_weights(matrix: sparse.csr_matrix, l2: float) -> np.ndarray:
    """EASE (Steck, 2019): the closed-form item-item weights [V, V] of a binary user x item matrix, zero diagonal."""
    gram = (matrix.T @ matrix).toarray()
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = precision / -np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    return weights


def ease_lists(data: SequenceData, visible_rows: np.ndarray, histories: Sequence[np.ndarray], allowed: np.ndarray | None, k: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """EASE fitted on the visible corpus; score = the history's row of the item-item weights."""
    weights = ease_weights(interaction_matrix(data, np.flatnonzero(check_rows(data, visible_rows))), l2)
    scores = history_matrix(histories, data.n_items).sign() @ weights  # each history item once
    forbid = forbidden_items(histories, data.n_items, allowed, exclude_seen=True).numpy()
    return top_k_admissible(scores, forbid, k)


def select_ease_l2(data: SequenceData, split: BeyondLogSplit, cfg: BeyondLogConfig, grid: Sequence[float], valid_user_frac: float) -> tuple[float, dict[float, float]]:
    """The EASE l2 with the best recall@k on a validation split of world users (beyond_log.validation_split); (best, recall per l2)."""
    visible, inner = validation_split(data, split, cfg, valid_user_frac)
    recall = {}
    for l2 in grid:
        items, _ = ease_lists(visible, inner.visible_rows, inner.histories, inner.allowed, cfg.k, l2)
        recall[float(l2)] = evaluate_lists(items, inner, cfg.k)[f"recall@{cfg.k}"]
    return max(recall, key=lambda l2: recall[l2]), recall


@dataclass
class SASRecGenerator:
    """A SASRec trained on the visible corpus with its training record."""

    model: SASRec
    max_len: int
    fit: FitResult
    wall_s: float


def _corpus_split(data: SequenceData, visible_rows: np.ndarray, users: np.ndarray) -> TopKSplit:
    """A TopKSplit over the visible rows whose 'validation position' is each user's end, so training_windows covers every event."""
    visible = data.subset(check_rows(data, visible_rows))
    end = visible.offsets[users + 1]
    return TopKSplit(data=visible, users=users, valid_pos=end, test_pos=end)


def split_users(data: SequenceData, visible_rows: np.ndarray, valid_user_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train users, validation users) among users with enough visible events; the same draw as GBR's build_windows."""
    counts = np.diff(data.subset(check_rows(data, visible_rows)).offsets)
    users = np.flatnonzero(counts >= MIN_WINDOW)
    n_valid = min(len(users) - 1, max(1, round(valid_user_frac * len(users))))
    valid = np.sort(np.random.default_rng(seed).choice(users, size=n_valid, replace=False))
    return np.setdiff1d(users, valid), valid


def sasrec_valid_loss(model: SASRec, split: TopKSplit, windows: tuple[np.ndarray, np.ndarray], max_len: int, batch_windows: int) -> float:
    """Mean next-item cross-entropy over the validation users' windows."""
    items = torch.from_numpy(split.data.items)
    end, start = (torch.from_numpy(a) for a in windows)
    total, count = 0.0, 0
    with torch.no_grad():
        for offset in range(0, len(end), batch_windows):
            rows = end[offset : offset + batch_windows].unsqueeze(1) - (max_len + 1) + torch.arange(max_len + 1)
            seq = items[rows.clamp(min=0)].masked_fill(rows < start[offset : offset + batch_windows].unsqueeze(1), 0)
            inputs, targets = (x.to(model.item_embedding.weight.device) for x in (seq[:, :-1], seq[:, 1:]))
            predict = (inputs > 0) & (targets > 0)
            loss = F.cross_entropy(model.logits(model.hidden(inputs)[predict]), targets[predict], reduction="sum")
            total, count = total + float(loss), count + int(predict.sum())
    return total / max(count, 1)


def prompt_response_windows(seq: torch.Tensor, response_items: torch.Tensor, frac: float, generator: torch.Generator) -> torch.Tensor:
    """Rewrite a `frac` share of left-padded windows [B, L] as prompt/response rows: the response items moved last.

    The same rows GBR trains on (gbr.train.prompt_response), for a left-to-right model: padding, then the
    window's other items, then its `response_items` (time order kept inside both), so the next-item loss
    learns what follows a history of the other kind.
    """
    chosen = torch.rand(seq.shape[0], generator=generator) < frac  # [B]
    key = torch.where(seq > 0, 1 + (response_items[seq] & chosen.unsqueeze(1)).long(), 0)  # padding, prompt, response
    return seq.gather(1, torch.sort(key, dim=1, stable=True).indices)


def train_sasrec_generator(
    data: SequenceData, visible_rows: np.ndarray, model_cfg: ModelConfig, train_cfg: TrainConfig, max_len: int,
    seed: int, valid_user_frac: float, eval_every: int | None = None, init_embeddings: np.ndarray | None = None,
    select: Callable[[SASRecGenerator], float] | None = None, response_items: np.ndarray | None = None, response_frac: float = 0.0,
) -> SASRecGenerator:
    """Train SASRec (rank.topk's epoch) on the visible corpus; keep the round with the lowest held-out next-item loss.

    `init_embeddings` [n_items + 1, d] warm-start the item embeddings through gbr.model.map_embeddings,
    so the generator can start from the same vectors as GBR. `select` scores the generator after each round
    (higher is better; e.g. a task metric on held-out users) in place of minus that loss. `response_items`
    [n_items + 1] bool with `response_frac` > 0 trains that share of each batch's windows as prompt/response
    rows (prompt_response_windows), as GBR's `response_frac` does.
    """
    started = time.perf_counter()
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    generator = seed_everything(seed)
    train_users, valid_users = split_users(data, visible_rows, valid_user_frac, seed)
    train_split = _corpus_split(data, visible_rows, train_users)
    valid_split = _corpus_split(data, visible_rows, valid_users)
    train_windows = training_windows(train_split, max_len)
    valid_windows = training_windows(valid_split, max_len)
    run_cfg = RunConfig(protocol=ProtocolConfig(name="topk", topk=TopKProtocolConfig(max_len=max_len)), model=model_cfg.model_copy(update={"name": "sasrec"}), train=train_cfg.model_copy(update={"progress": False}))
    net = SASRec(data.n_items, max_len, run_cfg.model)
    if init_embeddings is not None:
        with torch.no_grad():
            net.item_embedding.weight.copy_(torch.from_numpy(map_embeddings(init_embeddings, model_cfg.embedding_dim, seed)))
    net.to(train_cfg.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    n_windows = len(train_windows[0])
    per_round = eval_every or n_windows
    rewrite = None
    if response_items is not None and response_frac > 0:
        is_response = torch.from_numpy(np.asarray(response_items, dtype=bool))

        def rewrite(seq: torch.Tensor) -> torch.Tensor:
            return prompt_response_windows(seq, is_response, response_frac, generator)
    state = {"order": np.zeros(0, np.int64)}
    rng = np.random.default_rng(seed)

    def train_round(epoch: int) -> tuple[float, int]:
        if len(state["order"]) < per_round:
            state["order"] = np.concatenate([state["order"], rng.permutation(n_windows)])
        idx, state["order"] = state["order"][:per_round], state["order"][per_round:]
        return sasrec_epoch(net, train_split, (train_windows[0][idx], train_windows[1][idx]), optimizer, run_cfg, generator, epoch, rewrite)

    batch_windows = max(1, train_cfg.eval_batch_size // max_len)
    generator_so_far = SASRecGenerator(net, max_len, FitResult(), 0.0)

    def validate() -> float:
        if select is not None:
            return select(generator_so_far)
        return -sasrec_valid_loss(net, valid_split, valid_windows, max_len, batch_windows)

    result = fit(net, train_round, validate, run_cfg.train)
    return SASRecGenerator(net, max_len, result, time.perf_counter() - started)


@torch.no_grad()
def generate_autoregressive(
    generator: SASRecGenerator, histories: Sequence[np.ndarray], k: int, allowed: np.ndarray | None, batch_size: int = 512, steps: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """K items per history in `steps` rounds (default K: greedily one at a time); each round's picks are appended and condition the next; (items, confidence).

    A round appends its ceil(remaining / rounds left) most probable admissible items, best first, so 1 round is
    SASRec's plain top-K and K rounds is greedy decoding: the same schedule as GBR's unmasking rounds.
    """
    steps = k if steps is None else steps
    if not 1 <= steps <= k:
        raise InputError(None, "steps", f"{steps} decoding rounds for {k} items", f"use 1 to {k}")
    net, max_len = generator.model, generator.max_len
    net.eval()
    n_items = net.item_embedding.num_embeddings - 1
    device = net.item_embedding.weight.device
    all_items, all_conf = [], []
    for offset in range(0, len(histories), batch_size):
        batch = histories[offset : offset + batch_size]
        seq = torch.zeros((len(batch), max_len), dtype=torch.long)  # left-padded, newest last
        for row, history in enumerate(batch):
            recent = np.asarray(history, dtype=np.int64)[-max_len:]
            if len(recent):
                seq[row, max_len - len(recent) :] = torch.from_numpy(recent)
        seq, forbid = seq.to(device), forbidden_items(batch, n_items, allowed, exclude_seen=True).to(device)
        users = torch.arange(len(batch), device=device).unsqueeze(1)
        items = torch.zeros((len(batch), k), dtype=torch.long, device=device)
        conf = torch.zeros((len(batch), k), device=device)
        filled = 0
        for step in range(steps):
            n_pick = math.ceil((k - filled) / (steps - step))
            probs = torch.softmax(net(seq), dim=-1).masked_fill(forbid, 0.0)  # [B, V]
            best_p, best = probs.topk(n_pick, dim=1)  # [B, n_pick], most probable first
            items[:, filled : filled + n_pick] = best
            conf[:, filled : filled + n_pick] = (best_p / probs.sum(dim=1, keepdim=True).clamp(min=torch.finfo(probs.dtype).tiny)).clamp(max=1.0)
            forbid[users, best] = True
            seq = torch.cat([seq[:, n_pick:], best], dim=1)[:, -max_len:]
            filled += n_pick
        all_items.append(items.cpu().numpy())
        all_conf.append(conf.cpu().numpy())
    if not all_items:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(all_items), np.concatenate(all_conf)
