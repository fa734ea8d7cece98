"""Semantic IDs: residual quantisation of item vectors into short code tuples (RQ-KMeans, or RQ-VAE), plus a dedup level.

Convention: codes run 0..codes-1 at every level (the dedup level 0..max_dedup_index). Consumers that need 0 as
padding add 1 to every code (the ranker does), so that -1, used for "no semantic ID", becomes padding too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn
from tqdm.auto import tqdm

from reaseq.represent.config import SemanticIdConfig


@dataclass
class SemanticIds:
    """Codes int64 [n, levels (+1 dedup level)], one row per input vector, and the tokenizer report."""

    codes: np.ndarray
    report: dict[str, Any]


def code_stats(codes: np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Usage and entropy of one level's codes: codes used, used / codebook_size, entropy in bits and / log2(codebook_size)."""
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum() if len(codes) else counts.astype(np.float64)
    entropy = float(-(p * np.log2(p)).sum()) if len(p) else 0.0
    return {
        "codes_used": len(counts),
        "usage": len(counts) / codebook_size,
        "entropy_bits": entropy,
        "normalized_entropy": entropy / float(np.log2(codebook_size)),
    }


def collision_rate(codes: np.ndarray) -> float:
    """Fraction of rows whose full code tuple is shared with at least one other row."""
    if len(codes) == 0:
        return 0.0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def dedup_column(codes: np.ndarray) -> np.ndarray:
    """int64 [n]: 0, 1, 2... over the rows sharing a code tuple (in row order), so that tuple + column is unique."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_groups[1:] != sorted_groups[:-1]]))
    rank_sorted = np.arange(len(order)) - np.repeat(starts, np.diff(np.concatenate([starts, [len(order)]])))
    out = np.empty(len(order), np.int64)
    out[order] = rank_sorted
    return out


def _kmeans(points: np.ndarray, k: int, iterations: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels [n] and centres [k', d], with k' clipped to the number of distinct points (KMeans needs k' <= that)."""
    k = min(k, len(np.unique(points, axis=0)))
    if k <= 1:
        return np.zeros(len(points), np.int64), points.mean(0, keepdims=True)
    km = KMeans(n_clusters=k, max_iter=iterations, n_init=1, random_state=seed).fit(points)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(points.dtype)


def rq_kmeans(vectors: np.ndarray, cfg: SemanticIdConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Level-by-level KMeans on residuals: codes [n, levels] and, per level, the relative residual norm left."""
    residual = np.asarray(vectors, np.float64).copy()
    base = float(np.linalg.norm(residual, axis=1).mean()) or 1.0
    codes = np.zeros((len(residual), cfg.levels), np.int64)
    info = []
    for level in range(cfg.levels):
        labels, centres = _kmeans(residual, cfg.codes, cfg.kmeans_iterations, cfg.seed + level)
        codes[:, level] = labels
        residual -= centres[labels]
        info.append({"relative_residual": float(np.linalg.norm(residual, axis=1).mean()) / base})
    return codes, info


class RQVAE(nn.Module):
    """MLP autoencoder whose latent is replaced by a sum of `levels` codebook vectors chosen residual by residual."""

    def __init__(self, in_dim: int, hidden: int, latent: int, levels: int, codes: int, beta: float) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.GELU(), nn.Linear(hidden, in_dim))
        self.codebooks = nn.Parameter(torch.zeros(levels, codes, latent))
        self.beta = beta

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Straight-through quantised latent [B, latent], codes [B, levels], codebook + commitment loss."""
        residual, quantised = z, torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        for codebook in self.codebooks:  # [codes, latent]
            code = torch.cdist(residual.detach(), codebook.detach()).argmin(-1)  # [B]
            chosen = codebook[code]
            # Codebook vectors move to the residuals; the encoder is held to the codes it picked (commitment).
            loss = loss + F.mse_loss(chosen, residual.detach()) + self.beta * F.mse_loss(residual, chosen.detach())
            quantised = quantised + chosen
            residual = residual - chosen.detach()
            codes.append(code)
        return z + (quantised - z).detach(), torch.stack(codes, -1), loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        quantised, codes, vq_loss = self.quantise(self.encoder(x))
        return self.decoder(quantised), codes, vq_loss


def rq_vae(vectors: np.ndarray, cfg: SemanticIdConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Train an RQ-VAE on the vectors (codebooks started from RQ-KMeans of the initial latents); codes [n, levels]."""
    x = torch.from_numpy(np.asarray(vectors, np.float32))
    n_codes = min(cfg.codes, len(x))
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = RQVAE(x.shape[1], cfg.rqvae_hidden, cfg.rqvae_latent_dim, cfg.levels, n_codes, cfg.rqvae_beta)
        generator = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        latent = model.encoder(x).numpy()
        init_codes, _ = rq_kmeans(latent, cfg.model_copy(update={"codes": n_codes}))
        residual = latent.copy()
        for level in range(cfg.levels):
            # Codes KMeans did not produce (fewer distinct points than codes) start on random residuals.
            centres = residual[torch.randint(len(x), (n_codes,), generator=generator).numpy()]
            for c in np.unique(init_codes[:, level]):
                centres[c] = residual[init_codes[:, level] == c].mean(0)
            model.codebooks[level] = torch.from_numpy(centres)
            residual -= centres[init_codes[:, level]]

    def reconstruction() -> float:
        model.eval()
        with torch.no_grad():
            return float(F.mse_loss(model(x)[0], x))

    initial = reconstruction()
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.rqvae_lr)
    model.train()
    for _ in tqdm(range(cfg.rqvae_epochs), desc="rq-vae", unit="epoch", disable=not cfg.progress, leave=False):
        for batch in torch.randperm(len(x), generator=generator).split(cfg.rqvae_batch_size):
            recon, _, vq_loss = model(x[batch])
            loss = F.mse_loss(recon, x[batch]) + vq_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    final = reconstruction()
    with torch.no_grad():
        codes = model(x)[1].numpy().astype(np.int64)
    return codes, {"reconstruction_mse_initial": initial, "reconstruction_mse_final": final}


def semantic_ids(vectors: np.ndarray, cfg: SemanticIdConfig) -> SemanticIds:
    """Quantise vectors [n, d] into codes [n, levels (+1 if dedup)], each 0..codes-1 (see the module docstring)."""
    started = time.perf_counter()
    vectors = np.asarray(vectors, np.float32)
    level_info: list[dict[str, Any]] = [{} for _ in range(cfg.levels)]
    extra: dict[str, Any] = {}
    if len(vectors) == 0:
        codes = np.zeros((0, cfg.levels), np.int64)
    elif cfg.method == "rq_kmeans":
        codes, level_info = rq_kmeans(vectors, cfg)
    else:
        codes, extra = rq_vae(vectors, cfg)
    per_level = [{"level": level, **code_stats(codes[:, level], cfg.codes), **level_info[level]} for level in range(cfg.levels)]
    before = collision_rate(codes)
    report: dict[str, Any] = {
        "method": cfg.method,
        "levels": cfg.levels,
        "codes": cfg.codes,
        "n_items": len(codes),
        "per_level": per_level,
        "collision_rate": before,  # before the dedup level
        "unique_tuples": len(np.unique(codes, axis=0)) if len(codes) else 0,
        **extra,
    }
    if cfg.dedup:
        dedup = dedup_column(codes)
        codes = np.concatenate([codes, dedup[:, None]], axis=1)
        report["max_dedup_index"] = int(dedup.max()) if len(dedup) else 0
        report["collision_rate_after_dedup"] = collision_rate(codes)
    report["seconds"] = time.perf_counter() - started
    return SemanticIds(codes, report)
