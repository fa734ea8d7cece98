"""Small building blocks shared by the rankers."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear -> PReLU -> Dropout blocks, then an optional output layer."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0, out_dim: int | None = None) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.PReLU(), nn.Dropout(dropout)]
            in_dim = width
        if out_dim is not None:
            layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


class TargetAttention(nn.Module):
    """DIN's activation unit: scores each history item against the target, then pools the history."""

    def __init__(self, dim: int, hidden: list[int], softmax: bool = True) -> None:
        super().__init__()
        # The first layer over [q, k, q - k, q * k] is split into its q, k and q*k blocks:
        # the q block runs once per sample instead of once per history position, and no concat is built.
        self.query_proj = nn.Linear(dim, hidden[0])
        self.key_proj = nn.Linear(dim, hidden[0], bias=False)
        self.product_proj = nn.Linear(dim, hidden[0], bias=False)
        self.act = nn.PReLU()
        self.rest = MLP(hidden[0], hidden[1:], out_dim=1)
        self.softmax = softmax

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # query [B, D], keys [B, L, D], mask [B, L] (True = real event) -> pooled [B, D]
        # keys [1, L, D] and mask [1, L] are shared by all B queries (one user, many candidates) without copies.
        # W [q, k, q-k, q*k] = (Wq + Wd) q + (Wk - Wd) k + Wp (q*k); Wd is absorbed into the learned Wq, Wk.
        hidden = self.query_proj(query).unsqueeze(1) + self.key_proj(keys) + self.product_proj(query.unsqueeze(1) * keys)
        scores = self.rest(self.act(hidden)).squeeze(-1)  # [B, L]
        if self.softmax:
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            weights = torch.nan_to_num(weights)  # users with an empty history pool to zero
        else:
            weights = scores * mask  # the original DIN keeps raw weights so intensity is preserved
        return (weights.unsqueeze(1) @ keys).squeeze(1)  # [B, 1, L] @ [B or 1, L, D] -> [B, D]
