"""Item-encoder parts fed by RER's tables: aligned knowledge (gated with the ID part), semantic IDs, and the
raw-text (`din_text`) and KAR-style (mixture-of-experts adaptor) baselines.

Every part maps item ids [...] to vectors [..., out_dim] and returns zeros for padding (id 0) and for items
without knowledge. Fixed lookup tables are non-persistent buffers: a checkpoint holds the learned weights only,
and the tables come back from the embed step's files.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reaseq.config import ModelConfig
from reaseq.errors import ConfigError
from reaseq.rank.models.item_encoder import per_unique
from reaseq.represent.align import Projection
from reaseq.represent.tables import NO_CODE, KnowledgeTables, load_tables

KNOWLEDGE_PART = "knowledge"  # name of the knowledge part in the item encoder (fused with "id" when gated)
SEMANTIC_ID_PART = "semantic_ids"
TEXT_RESIDUAL_PART = "text_residual"  # raw text beside the aligned part (model.text_residual), summed outside the gate
# Code embeddings start near zero, as the ID part's do: a code is an ID shared by similar items, and large random
# starting vectors (nn.Embedding's N(0, 1)) drown the other parts and overfit (measured on ML-100K).
CODE_INIT_STD = 0.02


class AlignedKnowledgePart(nn.Module):
    """RER's aligned knowledge vectors through a trainable linear map to the ranker's width, with the popularity gate.

    The ItemEncoder mixes this part with the ID part as gate * id + (1 - gate) * knowledge. Items without
    knowledge get gate 1 (ID only), so a missing text never shrinks their ID embedding. With a projection,
    the vectors are recomputed from the text vectors by a trainable copy of RER's projection (fine-tuning).
    """

    def __init__(self, aligned: torch.Tensor, gate: torch.Tensor, has_knowledge: torch.Tensor, dim: int,
                 text_vectors: torch.Tensor | None = None, projection: Projection | None = None) -> None:
        super().__init__()
        self.out_dim = dim
        self.register_buffer("aligned", aligned.float(), persistent=False)  # [I+1, d]
        self.register_buffer("has_knowledge", has_knowledge.bool(), persistent=False)  # [I+1]
        self.register_buffer("gate", torch.where(self.has_knowledge, gate.float(), torch.ones_like(gate.float())), persistent=False)  # [I+1]
        self.projection = projection
        if projection is not None:
            if text_vectors is None:
                raise ValueError("fine-tuning the projection needs the text vectors")
            self.register_buffer("text_vectors", text_vectors.float(), persistent=False)  # [I+1, dt]
        width = aligned.shape[1]
        self.adapter = nn.Linear(width, dim, bias=False)
        if width == dim:  # already the ranker's width: start from the aligned space itself
            nn.init.eye_(self.adapter.weight)

    def gate_of(self, items: torch.Tensor) -> torch.Tensor:
        """Weight of the ID part per item [...]; 1 - gate weighs this part."""
        return self.gate[items]

    def _vectors(self, items: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return self.aligned[items]
        known = self.has_knowledge[items].unsqueeze(-1)
        return self.projection(self.text_vectors[items]) * known  # [n, d]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return per_unique(items, lambda ids: self.adapter(self._vectors(ids)))  # [..., D]


class SemanticIdPart(nn.Module):
    """One embedding table per semantic-ID level (code + 1, so 0 = padding / no ID), summed or averaged."""

    def __init__(self, codes: torch.Tensor, dim: int, pooling: str = "sum") -> None:
        super().__init__()
        self.out_dim = dim
        self.pooling = pooling
        self.register_buffer("codes", codes.long(), persistent=False)  # [I+1, L], 0 = padding
        sizes = (codes.max(0).values + 1).tolist() if len(codes) else []
        self.embeddings = nn.ModuleList(nn.Embedding(int(size), dim, padding_idx=0) for size in sizes)
        for embedding in self.embeddings:
            nn.init.normal_(embedding.weight, std=CODE_INIT_STD)
            with torch.no_grad():
                embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        codes = self.codes[items]  # [..., L]
        out = sum(emb(codes[..., level]) for level, emb in enumerate(self.embeddings))
        if self.pooling == "mean":
            out = out / (codes > 0).sum(-1, keepdim=True).clamp(min=1)
        return out


class TextPart(nn.Module):
    """Raw (unaligned) knowledge-text vectors through a trainable linear layer: the `din_text` baseline."""

    def __init__(self, text_vectors: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.register_buffer("text_vectors", text_vectors.float(), persistent=False)  # [I+1, dt], zeros without text
        self.linear = nn.Linear(text_vectors.shape[1], dim, bias=False)  # no bias: an item without text adds zeros

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return per_unique(items, lambda ids: self.linear(self.text_vectors[ids]))


class KARPart(nn.Module):
    """KAR-style hybrid-expert adaptor (Xi et al. 2023): knowledge vector -> softmax-gated sum of expert MLPs -> D."""

    def __init__(self, text_vectors: torch.Tensor, has_knowledge: torch.Tensor, dim: int, n_experts: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.out_dim = dim
        self.register_buffer("text_vectors", text_vectors.float(), persistent=False)  # [I+1, dt]
        self.register_buffer("has_knowledge", has_knowledge.bool(), persistent=False)  # [I+1]
        width = text_vectors.shape[1]
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(width, hidden), nn.PReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)) for _ in range(n_experts)
        )
        self.gate_net = nn.Linear(width, n_experts)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Expert weights [n, E] for knowledge vectors [n, dt]; each row sums to 1."""
        return torch.softmax(self.gate_net(x), dim=-1)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Knowledge vectors [n, dt] -> adapted vectors [n, D]."""
        experts = torch.stack([expert(x) for expert in self.experts], dim=-2)  # [n, E, D]
        return torch.einsum("ne,ned->nd", self.gates(x), experts)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        def encode(ids: torch.Tensor) -> torch.Tensor:
            return self.adapt(self.text_vectors[ids]) * self.has_knowledge[ids].unsqueeze(-1)  # no text, no vector

        return per_unique(items, encode)


def needs_tables(cfg: ModelConfig) -> bool:
    """Whether the config enables a part that reads RER's tables."""
    return cfg.knowledge != "none" or cfg.semantic_ids


def resolve_tables(cfg: ModelConfig, tables: KnowledgeTables | None) -> KnowledgeTables | None:
    """The tables given, else those at `model.knowledge_tables`; ConfigError when an enabled part has none."""
    if not needs_tables(cfg) or tables is not None:
        return tables
    if cfg.knowledge_tables is None:
        enabled = [f"model.knowledge={cfg.knowledge}"] * (cfg.knowledge != "none") + ["model.semantic_ids=true"] * cfg.semantic_ids
        raise ConfigError(None, "model.knowledge_tables", f"{' and '.join(enabled)} need RER's knowledge tables, and none were given",
                          "run the embed step first (`reaseq embed`) and set model.knowledge_tables to its knowledge.npz, or set model.knowledge=none and model.semantic_ids=false")
    return load_tables(Path(cfg.knowledge_tables))


def _semantic_codes(tables: KnowledgeTables, keep_dedup: bool) -> np.ndarray:
    codes = tables.semantic_ids
    dedup = bool(tables.meta.get("config", {}).get("semantic_ids", {}).get("dedup", False))
    if dedup and not keep_dedup and codes.shape[1] > 1:
        codes = codes[:, :-1]
    return np.where(codes == NO_CODE, 0, codes + 1)


def build_knowledge_parts(cfg: ModelConfig, tables: KnowledgeTables | None, n_items: int, dim: int) -> dict[str, nn.Module]:
    """The RER parts the config enables (none, or "knowledge" and/or "semantic_ids"), built from the tables."""
    tables = resolve_tables(cfg, tables)
    if tables is None:
        return {}
    if tables.n_items != n_items:
        raise ConfigError(cfg.knowledge_tables, "model.knowledge_tables", f"the tables cover {tables.n_items} items, the dataset has {n_items}",
                          "rebuild the tables for this dataset with the embed step (`reaseq embed --force`)")
    parts: dict[str, nn.Module] = {}
    text = torch.from_numpy(tables.text_vectors)
    known = torch.from_numpy(tables.has_knowledge)
    if cfg.knowledge == "aligned":
        projection = None
        if cfg.fine_tune_projection:
            if tables.projection is None:
                raise ConfigError(cfg.knowledge_tables, "model.fine_tune_projection", "the tables were saved without their projection (.pt file)",
                                  "re-run the embed step so that knowledge.pt is written, or set model.fine_tune_projection=false")
            projection = copy.deepcopy(tables.projection)  # the tables keep RER's own projection untouched
        parts[KNOWLEDGE_PART] = AlignedKnowledgePart(torch.from_numpy(tables.aligned), torch.from_numpy(tables.gate), known, dim, text, projection)
        if cfg.text_residual:
            parts[TEXT_RESIDUAL_PART] = TextPart(text, dim)
    elif cfg.knowledge == "text":
        parts[KNOWLEDGE_PART] = TextPart(text, dim)
    elif cfg.knowledge == "kar":
        parts[KNOWLEDGE_PART] = KARPart(text, known, dim, cfg.kar_experts, cfg.kar_hidden, cfg.dropout)
    if cfg.semantic_ids:
        parts[SEMANTIC_ID_PART] = SemanticIdPart(torch.from_numpy(_semantic_codes(tables, cfg.semantic_id_dedup_level)), dim, cfg.semantic_id_pooling)
    return parts
