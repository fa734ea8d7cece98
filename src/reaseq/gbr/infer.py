"""Inference: append K masked slots to a history and unmask them over a few rounds (LLaDA low-confidence remasking)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from reaseq.errors import InputError
from reaseq.gbr.model import PAD, MaskedDiffusionLM, mask_token


def slot_tokens(histories: Sequence[np.ndarray], k: int, max_len: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [U, L] = the last max_len - k history items, then k MASK slots, then PAD; and the slots' columns [U, k]."""
    keep = max_len - k
    recent = [np.asarray(h, dtype=np.int64)[-keep:] if keep else np.zeros(0, np.int64) for h in histories]
    width = max(len(h) for h in recent) + k
    tokens = torch.full((len(recent), width), PAD, dtype=torch.long)
    slots = torch.empty((len(recent), k), dtype=torch.long)
    for row, items in enumerate(recent):
        tokens[row, : len(items)] = torch.from_numpy(items)
        tokens[row, len(items) : len(items) + k] = mask_id
        slots[row] = torch.arange(len(items), len(items) + k)
    return tokens, slots


def history_pieces(histories: Sequence[np.ndarray], keep: int, context: Literal["recent", "all"]) -> tuple[list[np.ndarray], np.ndarray]:
    """The history pieces the model reads and the user each belongs to: (pieces, owner [R]).

    "recent": each history's last `keep` items (one piece per user). "all": the whole history cut into
    pieces of `keep` items, newest first, so a long history is read in full instead of being truncated.
    """
    pieces: list[np.ndarray] = []
    owner: list[int] = []
    for user, history in enumerate(histories):
        history = np.asarray(history, dtype=np.int64)
        whole = context == "all" and 0 < keep < len(history)
        ends = range(len(history), 0, -keep) if whole else [len(history)]
        for end in ends:
            pieces.append(history[max(0, end - keep) : end])
            owner.append(user)
    return pieces, np.asarray(owner, dtype=np.int64)


def forbidden_items(histories: Sequence[np.ndarray], n_items: int, allowed: np.ndarray | None, exclude_seen: bool) -> torch.Tensor:
    """Bool [U, n_items + 1]: PAD, items outside `allowed`, and (optionally) each user's whole history."""
    forbid = torch.zeros((len(histories), n_items + 1), dtype=torch.bool)
    forbid[:, PAD] = True
    if allowed is not None:
        forbid |= ~torch.from_numpy(np.asarray(allowed, dtype=bool)).unsqueeze(0)
    if exclude_seen:
        for row, items in enumerate(histories):
            forbid[row, torch.from_numpy(np.asarray(items, dtype=np.int64))] = True
    return forbid


def _check_inputs(model: MaskedDiffusionLM, histories: Sequence[np.ndarray], k: int, steps: int, allowed: np.ndarray | None) -> None:
    if not 1 <= k < model.max_len:
        raise InputError(None, "k", f"{k} slots do not fit a model of max_len {model.max_len}", f"use 1 <= k < {model.max_len}")
    if steps < 1:
        raise InputError(None, "steps", f"{steps} unmasking rounds", "use at least 1")
    if allowed is not None and np.asarray(allowed).shape != (model.n_items + 1,):
        raise InputError(None, "allowed", f"shape {np.asarray(allowed).shape}, expected ({model.n_items + 1},)", "pass one boolean per item id, index 0 for padding")
    for row, items in enumerate(histories):
        items = np.asarray(items)
        if items.size and (items.min() < 1 or items.max() > model.n_items):
            raise InputError(None, f"histories[{row}]", f"item ids outside 1..{model.n_items}", "pass the prepared item indices of the user's events")


@torch.no_grad()
def _infer_batch(
    model: MaskedDiffusionLM, histories: Sequence[np.ndarray], k: int, steps: int, allowed: np.ndarray | None, exclude_seen: bool,
    temperature: float, remasking: str, generator: torch.Generator, context: Literal["recent", "all"],
) -> tuple[torch.Tensor, torch.Tensor]:
    device = model.output_bias.device  # inference runs where the model lives (a GPU during training, CPU after)
    pieces, owner_np = history_pieces(histories, model.max_len - k, context)
    tokens, slots = slot_tokens(pieces, k, model.max_len, mask_token(model.n_items))  # [R, L], [R, k]: R pieces
    owner = torch.from_numpy(owner_np)  # [R] the user each piece belongs to
    n_pieces = torch.bincount(owner, minlength=len(histories)).view(-1, 1, 1)  # [U, 1, 1]
    forbid = forbidden_items(histories, model.n_items, allowed, exclude_seen)  # [U, V]
    short = (~forbid).sum(dim=1) < k
    if short.any():
        row = int(torch.nonzero(short)[0])
        raise InputError(None, "allowed", f"user row {row} has only {int((~forbid[row]).sum())} admissible items for {k} slots", "allow more items, lower k, or set exclude_seen=False")
    # Work in the columns of the candidate items only: with a small allowed set this is most of the speed.
    candidates = torch.from_numpy(np.flatnonzero(np.asarray(allowed, dtype=bool))) if allowed is not None else torch.arange(1, model.n_items + 1)
    forbid = forbid[:, candidates]  # [U, C]
    tokens, slots, owner, n_pieces, forbid, candidates = (x.to(device) for x in (tokens, slots, owner, n_pieces, forbid, candidates))
    head, bias = model.token_embedding.weight[candidates], model.output_bias[candidates]  # [C, D], [C]
    piece_rows = torch.arange(len(owner), device=device)
    users = torch.arange(len(histories), device=device)
    items = torch.zeros((len(histories), k), dtype=torch.long, device=device)
    confidence = torch.zeros((len(histories), k), device=device)
    open_slot = torch.ones((len(histories), k), dtype=torch.bool, device=device)  # still MASK
    for step in range(steps):
        remaining = int(open_slot[0].sum())  # every row has the same number of open slots
        if remaining == 0:
            break
        n_commit = math.ceil(remaining / (steps - step))
        hidden = model.hidden(tokens)  # [R, L, D]
        hidden = hidden.gather(1, slots.unsqueeze(2).expand(-1, -1, hidden.shape[2]))  # [R, k, D]
        piece_logp = torch.log_softmax(hidden @ head.T + bias, dim=-1)  # [R, k, C]
        # A user read in several pieces gets the mean of their log-probabilities (a product of experts: an
        # item must fit every part of the history); with one piece this is the piece's own distribution.
        logits = torch.zeros((len(histories), k, len(candidates)), device=device).index_add_(0, owner, piece_logp) / n_pieces  # [U, k, C]
        probs = torch.softmax(logits, dim=-1).masked_fill(forbid.unsqueeze(1), 0.0)
        if temperature > 0:
            # Gumbel-max: picks item i with probability softmax(logits / temperature)_i.
            # Drawn on CPU from the seeded generator, so a GPU run samples what a CPU run does.
            uniform = torch.rand(logits.shape, generator=generator).to(device).clamp(min=torch.finfo(logits.dtype).tiny)
            logits = logits / temperature - torch.log(-torch.log(uniform))
        scores = logits.masked_fill(forbid.unsqueeze(1), -math.inf)
        mass = probs.sum(dim=-1)  # [U, k] probability left on admissible items
        # Commit slots one by one inside the round so that two slots never take the same item.
        for _ in range(n_commit):
            best = scores.argmax(dim=-1)  # [U, k] candidate column
            slot_conf = probs.gather(2, best.unsqueeze(2)).squeeze(2) / mass.clamp(min=torch.finfo(probs.dtype).tiny)
            key = slot_conf if remasking == "confidence" else torch.rand(open_slot.shape, generator=generator).to(device)
            slot = key.masked_fill(~open_slot, -math.inf).argmax(dim=1)  # [U]
            column = best[users, slot]
            items[users, slot] = candidates[column]
            confidence[users, slot] = slot_conf[users, slot].clamp(max=1.0)
            open_slot[users, slot] = False
            tokens[piece_rows, slots[piece_rows, slot[owner]]] = candidates[column[owner]]  # every piece of the user sees the pick
            forbid[users, column] = True
            mass -= probs[users, :, column]
            probs[users, :, column] = 0.0
            scores[users, :, column] = -math.inf
    return items.cpu(), confidence.cpu()


def infer(
    model: MaskedDiffusionLM,
    histories: Sequence[np.ndarray],
    k: int,
    steps: int,
    allowed: np.ndarray | None = None,
    exclude_seen: bool = True,
    temperature: float = 0.0,
    remasking: Literal["confidence", "random"] = "confidence",
    batch_size: int = 512,
    seed: int = 0,
    context: Literal["recent", "all"] = "recent",
) -> tuple[np.ndarray, np.ndarray]:
    """K inferred items per history and the probability each had when committed: (items [U, k], confidence [U, k]).

    Each history is cut to its last max_len - k items (context "recent") or read in full as pieces of
    max_len - k items whose slot log-probabilities are averaged (context "all"), and followed by k MASK
    slots. Every round predicts
    all open slots, forbids PAD, items outside `allowed`, the user's history (exclude_seen) and items
    already chosen, then commits the ceil(open / rounds left) most confident slots (or random ones) and
    leaves the rest masked for the next round. Confidence is the committed item's probability
    renormalised over the items that slot could still take, so it lies in (0, 1].
    """
    _check_inputs(model, histories, k, steps, allowed)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    items, confidence = [], []
    for offset in range(0, len(histories), batch_size):
        batch = histories[offset : offset + batch_size]
        got_items, got_conf = _infer_batch(model, batch, k, steps, allowed, exclude_seen, temperature, remasking, generator, context)
        items.append(got_items.numpy())
        confidence.append(got_conf.numpy())
    if not items:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(items), np.concatenate(confidence)


def generation_quality(items: np.ndarray, histories: Sequence[np.ndarray], allowed: np.ndarray | None, n_items: int) -> dict[str, float]:
    """Validity (a real, allowed item), duplicate rate (repeats within a user's list) and novelty (not in the user's history)."""
    items = np.asarray(items)
    real = (items >= 1) & (items <= n_items)
    valid = real & (np.asarray(allowed, dtype=bool)[np.clip(items, 0, n_items)] if allowed is not None else True)
    duplicates = novel = 0
    for row, history in zip(items, histories):
        duplicates += len(row) - len(np.unique(row))
        novel += int((~np.isin(row, history)).sum())
    n = max(items.size, 1)
    return {"validity": float(valid.sum() / n), "duplicate_rate": duplicates / n, "novelty": novel / n}


def quality_vs_steps(
    model: MaskedDiffusionLM,
    histories: Sequence[np.ndarray],
    k: int,
    steps_grid: Sequence[int],
    score: Callable[[np.ndarray], dict[str, float]],
    allowed: np.ndarray | None = None,
    **infer_kwargs: object,
) -> list[dict[str, float]]:
    """For each number of unmasking rounds: `score(items)` (e.g. recall@k), generation quality and inference seconds."""
    rows = []
    for steps in steps_grid:
        tick = time.perf_counter()
        items, confidence = infer(model, histories, k, steps, allowed, **infer_kwargs)  # type: ignore[arg-type]
        seconds = time.perf_counter() - tick
        rows.append({"steps": steps, **score(items), **generation_quality(items, histories, allowed, model.n_items), "mean_confidence": float(confidence.mean()), "infer_s": seconds})
    return rows
