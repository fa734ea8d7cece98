"""SASRec: a causal self-attention next-item model (Kang & McAuley, 2018), trained with full-softmax cross-entropy."""

from __future__ import annotations

import torch
from torch import nn

from reaseq.config import ModelConfig
from reaseq.data.dataset import SequenceData


class SASRec(nn.Module):
    """Reads a left-padded item sequence and predicts the next item at every position."""

    def __init__(self, n_items: int, max_len: int, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embedding_dim
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, dim)
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, cfg.num_heads, dim_feedforward=4 * dim, dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.num_heads = cfg.num_heads
        self.dropout = nn.Dropout(cfg.dropout)
        self.register_buffer("causal", torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1), persistent=False)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        # seq [B, L] left-padded item ids -> hidden states [B, L, D]
        length = seq.shape[1]
        positions = torch.arange(length, device=seq.device)
        x = self.dropout(self.item_embedding(seq) + self.position_embedding(positions))
        # Block future positions and padding keys; every position may see itself, so padded rows stay finite.
        blocked = self.causal[:length, :length].unsqueeze(0) | (seq == 0).unsqueeze(1)  # [B, L, L]
        blocked = blocked & ~torch.eye(length, dtype=torch.bool, device=seq.device)
        h = self.encoder(x, mask=blocked.repeat_interleave(self.num_heads, dim=0))
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden [..., D] -> scores over the catalogue [..., n_items + 1] (tied output embedding)
        return hidden @ self.item_embedding.weight.T

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores for the item following the last position of each sequence: [B, n_items + 1]."""
        return self.logits(self.hidden(seq)[:, -1])


def build_sasrec(data: SequenceData, max_len: int, cfg: ModelConfig) -> SASRec:
    """SASRec over the dataset's catalogue."""
    return SASRec(data.n_items, max_len, cfg)
