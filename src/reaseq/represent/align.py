"""Align knowledge-text vectors with collaborative item vectors: a small projection trained with symmetric InfoNCE."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.decomposition import TruncatedSVD
from torch import nn
from tqdm.auto import tqdm

from reaseq.errors import InputError
from reaseq.io import write_with
from reaseq.represent.config import AlignConfig

# Queries per similarity block of the neighbour report: bounds memory to block x pool floats.
NEIGHBOUR_BLOCK = 1024


class Projection(nn.Module):
    """Text vector -> collaborative space: an MLP (or one linear map) whose output is a direction times a fixed scale.

    InfoNCE only sees directions; `scale` (the mean norm of the collaborative vectors) gives the output the
    magnitude of an ID embedding, so the ranker can add the two.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden, self.dropout = in_dim, out_dim, hidden, dropout
        if hidden is None:
            self.net: nn.Module = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.register_buffer("scale", torch.ones(()))

    def direction(self, text: torch.Tensor) -> torch.Tensor:
        """Unit-length projected vectors [..., out_dim]."""
        return F.normalize(self.net(text), dim=-1)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.direction(text) * self.scale  # [..., out_dim]


@dataclass
class Alignment:
    """The trained projection, its output for every item, the popularity gate and the report."""

    projection: Projection
    aligned: np.ndarray  # float32 [I+1, d]; zeros for padding and items without text
    gate: np.ndarray  # float32 [I+1] in [0, 1]: weight of the ID part; 1 - gate weighs the knowledge part
    report: dict[str, Any]
    collab_basis: np.ndarray | None = None  # float32 [d, dc] when align.dim < the collaborative width: collab @ basis.T
    train_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    holdout_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def popularity_gate(counts: np.ndarray, pivot: float) -> np.ndarray:
    """count / (count + pivot): 0 for unseen items, 0.5 at `pivot` interactions, towards 1 for popular ones."""
    counts = np.asarray(counts, np.float64)
    gate = counts / (counts + pivot)
    gate[0] = 0.0  # padding
    return gate.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def neighbours(vectors: np.ndarray, queries: np.ndarray, pool: np.ndarray, k: int) -> np.ndarray:
    """int64 [len(queries), k]: each query item's k most cosine-similar items of `pool` (itself excluded), as item ids."""
    pool_vecs = _unit(vectors[pool].astype(np.float32))
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), NEIGHBOUR_BLOCK):
        block = queries[start : start + NEIGHBOUR_BLOCK]
        sims = _unit(vectors[block].astype(np.float32)) @ pool_vecs.T  # [block, pool]
        sims[pool[None, :] == block[:, None]] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + len(block)] = pool[top]
    return out


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray, queries: np.ndarray, pool: np.ndarray, k: int) -> float | None:
    """Mean |kNN_reference ∩ kNN_candidate| / k over `queries`, neighbours searched in `pool`; None if too few items."""
    k = min(k, len(pool) - 1)
    if k < 1 or len(queries) == 0:
        return None
    ref = neighbours(reference, queries, pool, k)
    cand = neighbours(candidate, queries, pool, k)
    shared = [len(np.intersect1d(r, c, assume_unique=True)) for r, c in zip(ref, cand)]
    return float(np.mean(shared) / k)


def _reduce(collab: np.ndarray, train: np.ndarray, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The collaborative vectors in `dim` dimensions: as they are, or their top singular directions (zeros stay zeros)."""
    width = collab.shape[1]
    if dim == width:
        return collab, None
    if dim > width:
        raise InputError(None, "align.dim", f"{dim} is wider than the collaborative vectors ({width})", f"set align.dim to at most {width}, or null")
    svd = TruncatedSVD(n_components=dim, random_state=seed).fit(collab[train])
    basis = svd.components_.astype(np.float32)  # [dim, width]
    return (collab @ basis.T).astype(np.float32), basis


def _split(eligible: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    n_holdout = round(cfg.holdout_frac * len(eligible))
    n_holdout = min(n_holdout, max(len(eligible) - 2, 0))  # keep two items to contrast
    shuffled = rng.permutation(eligible)
    return np.sort(shuffled[n_holdout:]), np.sort(shuffled[:n_holdout])


def _sample(items: np.ndarray, limit: int, seed: int) -> np.ndarray:
    if len(items) <= limit:
        return items
    return np.sort(np.random.default_rng(seed).choice(items, size=limit, replace=False))


def info_nce(text_dir: torch.Tensor, collab_dir: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over unit vectors [B, d]: row i of each side is the positive of row i of the other."""
    logits = text_dir @ collab_dir.T / temperature  # [B, B]
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def train_alignment(text_vectors: np.ndarray, collab: np.ndarray, counts: np.ndarray, cfg: AlignConfig) -> Alignment:
    """Fit the projection on items with interactions (minus a holdout) and project every item, cold ones included."""
    started = time.perf_counter()
    n_rows = len(text_vectors)
    if collab.shape[0] != n_rows or len(counts) != n_rows:
        raise InputError(None, "collab", f"text {text_vectors.shape}, collaborative {collab.shape} and counts {np.shape(counts)} disagree on the number of item rows", "pass one row per item id 0..n_items for all three")
    text_vectors = np.asarray(text_vectors, np.float32)
    has_text = np.linalg.norm(text_vectors, axis=1) > 0
    has_collab = np.linalg.norm(collab, axis=1) > 0
    has_text[0] = False  # padding
    eligible = np.flatnonzero(has_text & has_collab & (np.asarray(counts) > 0))
    if len(eligible) < 2:
        raise InputError(None, "collab", f"only {len(eligible)} item(s) have text, a collaborative vector and training interactions", "alignment needs at least two such items")
    train, holdout = _split(eligible, cfg)
    dim = cfg.dim or collab.shape[1]
    target, basis = _reduce(np.asarray(collab, np.float32), train, dim, cfg.seed)

    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        projection = Projection(text_vectors.shape[1], dim, cfg.hidden, cfg.dropout)
        generator = torch.Generator().manual_seed(cfg.seed)
        optimiser = torch.optim.AdamW(projection.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        x = torch.from_numpy(text_vectors[train])
        y = F.normalize(torch.from_numpy(target[train]), dim=-1)
        projection.train()
        epoch_loss = float("nan")
        for _ in tqdm(range(cfg.epochs), desc="align", unit="epoch", disable=not cfg.progress, leave=False):
            order = torch.randperm(len(train), generator=generator)
            total, batches = 0.0, 0
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                if len(batch) < 2:  # a lone item has no negative to contrast with
                    continue
                loss = info_nce(projection.direction(x[batch]), y[batch], cfg.temperature)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total, batches = total + loss.item(), batches + 1
            epoch_loss = total / max(batches, 1)
    projection.eval()
    projection.scale.fill_(float(np.linalg.norm(target[train], axis=1).mean()))
    with torch.no_grad():
        aligned = projection(torch.from_numpy(text_vectors)).numpy().astype(np.float32)
    aligned[~has_text] = 0.0

    pool, k = eligible, cfg.neighbour_k
    report_train = _sample(train, cfg.report_items, cfg.seed)

    def overlaps(queries: np.ndarray) -> dict[str, Any]:
        return {
            "items": len(queries),
            "raw": neighbour_overlap(target, text_vectors, queries, pool, k),
            "aligned": neighbour_overlap(target, aligned, queries, pool, k),
        }

    report = {
        "k": k,
        "dim": dim,
        "reduced_collaborative": basis is not None,
        "n_train": len(train),
        "n_holdout": len(holdout),
        "n_cold_with_text": int((has_text & (np.asarray(counts) == 0)).sum()),
        "n_without_text": int((~has_text[1:]).sum()),
        "overlap_train": overlaps(report_train),
        "overlap_holdout": overlaps(_sample(holdout, cfg.report_items, cfg.seed)),
        "final_loss": epoch_loss,
        "chance_loss": float(np.log(min(cfg.batch_size, len(train)))),  # InfoNCE of a projection that knows nothing
        "epochs": cfg.epochs,
        "seconds": time.perf_counter() - started,
    }
    gate = popularity_gate(counts, cfg.gate_pivot)
    return Alignment(projection, aligned, gate, report, basis, train, holdout)


def save_projection(projection: Projection, path: str | Path, collab_basis: np.ndarray | None = None) -> Path:
    """Write the projection's architecture, weights and scale (and the collaborative basis, if any) atomically."""
    state = {
        "in_dim": projection.in_dim,
        "out_dim": projection.out_dim,
        "hidden": projection.hidden,
        "dropout": projection.dropout,
        "state_dict": projection.state_dict(),
        "collab_basis": None if collab_basis is None else torch.from_numpy(collab_basis),
    }
    return write_with(path, lambda tmp: torch.save(state, tmp))


def load_projection(path: str | Path) -> tuple[Projection, np.ndarray | None]:
    """The projection saved by `save_projection` (in eval mode) and its collaborative basis (None when not reduced)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        projection = Projection(state["in_dim"], state["out_dim"], state["hidden"], state["dropout"])
        projection.load_state_dict(state["state_dict"])
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as err:
        raise InputError(path, None, f"cannot read the projection ({err})", "re-run the embed step to rewrite it") from err
    basis = state.get("collab_basis")
    return projection.eval(), None if basis is None else basis.numpy()
