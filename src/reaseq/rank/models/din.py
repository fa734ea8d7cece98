"""DIN: target attention over the user's behaviour sequence (Zhou et al., 2018), ID and side features."""

from __future__ import annotations

import torch
from torch import nn

from reaseq.config import ModelConfig
from reaseq.data.dataset import SequenceData
from reaseq.represent.tables import KnowledgeTables
from reaseq.rank.models.item_encoder import ItemEncoder, build_item_encoder
from reaseq.rank.models.knowledge_parts import KNOWLEDGE_PART, AlignedKnowledgePart, build_knowledge_parts
from reaseq.rank.models.layers import MLP, TargetAttention


class InferredBehaviourAttention(nn.Module):
    """GBR's inferred behaviours as a second sequence beside the real one, with its own target attention.

    Each inferred item is the shared item representation plus a learned source flag (inferred, not logged) plus
    a projection of its confidence. Besides the pooled vector it returns the confidence with which the target
    itself was inferred (0 when it was not), the most direct evidence GBR has about this candidate, and, with
    `target_indicator`, whether it was inferred at all. With `attention` off only those target features remain.
    """

    def __init__(self, dim: int, attention_hidden: list[int], softmax: bool, attention: bool = True, target_indicator: bool = False) -> None:
        super().__init__()
        self.source_flag = nn.Parameter(torch.randn(dim) * 0.02) if attention else None
        self.confidence = nn.Linear(1, dim) if attention else None
        self.attention = TargetAttention(dim, attention_hidden, softmax=softmax) if attention else None
        self.target_indicator = target_indicator
        self.out_dim = (dim if attention else 0) + 1 + int(target_indicator)

    def forward(self, target_items: torch.Tensor, target: torch.Tensor, items: torch.Tensor, inferred: torch.Tensor | None, confidence: torch.Tensor) -> torch.Tensor:
        # target_items [B], target [B, D], items [U, K] (0 = none; U = B or 1), inferred [U, K, D] (None without
        # the attention), confidence [U, K]
        # -> [B, out_dim]
        mask = items > 0
        hit = (items == target_items.unsqueeze(1)) & mask  # [B, K] where the target sits in the inferred list
        features = [(confidence * hit).sum(1, keepdim=True)]  # [B, 1] the target's confidence
        if self.target_indicator:
            features.append(hit.any(1, keepdim=True).to(confidence.dtype))  # [B, 1]
        if self.attention is not None:
            keys = (inferred + self.source_flag + self.confidence(confidence.unsqueeze(-1))) * mask.unsqueeze(-1)
            features.insert(0, self.attention(target, keys, mask))  # [B, D]
        return torch.cat(features, dim=-1)


class DIN(nn.Module):
    """Scores (user, history, target item) -> click logit."""

    def __init__(self, item_encoder: ItemEncoder, n_actions: int, user_features: torch.Tensor, user_feature_sizes: list[int], cfg: ModelConfig) -> None:
        super().__init__()
        dim = item_encoder.out_dim
        self.item_encoder = item_encoder
        self.action_embedding = nn.Embedding(n_actions + 1, dim, padding_idx=0) if cfg.use_history_ratings else None
        self.register_buffer("user_features", user_features, persistent=False)  # [n_users, F]
        self.user_embeddings = nn.ModuleList(nn.Embedding(size + 1, cfg.embedding_dim, padding_idx=0) for size in user_feature_sizes)
        self.attention = TargetAttention(dim, cfg.attention_hidden, softmax=cfg.attention_softmax)
        self.inferred = (
            InferredBehaviourAttention(dim, cfg.attention_hidden, cfg.attention_softmax, cfg.inferred_attention, cfg.inferred_target_indicator)
            if cfg.inferred else None
        )
        user_dim = cfg.embedding_dim * len(user_feature_sizes)
        inferred_dim = self.inferred.out_dim if self.inferred is not None else 0
        self.mlp = MLP(3 * dim + user_dim + inferred_dim, cfg.mlp_hidden, cfg.dropout, out_dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits [B] of a batch of samples, each with its own user and history."""
        return self.score(batch["item"], batch["hist_items"], batch["hist_actions"], batch["user"], batch.get("inf_items"), batch.get("inf_conf"))

    def forward_one_user(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The same logits for a batch whose rows share one user (a serving request): the user's side runs once.

        History, actions, user features and inferred behaviours are read from row 0 and broadcast over the
        candidates; left padding of a short history is dropped (it adds nothing to the attention or the mean).
        """
        if batch["item"].shape[0] == 0:
            return self(batch)  # no row to read the user from
        hist = batch["hist_items"][:1]  # [1, L]
        real = torch.nonzero(hist[0])
        start = int(real[0, 0]) if len(real) else hist.shape[1] - 1  # keep one (padding) position for an empty history
        first = {key: batch[key][:1] for key in ("user", "inf_items", "inf_conf") if key in batch}
        return self.score(batch["item"], hist[:, start:], batch["hist_actions"][:1, start:], first["user"], first.get("inf_items"), first.get("inf_conf"))

    def score(self, items: torch.Tensor, hist_items: torch.Tensor, hist_actions: torch.Tensor, users: torch.Tensor,
              inf_items: torch.Tensor | None = None, inf_conf: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B] for target `items` [B]; the user-side inputs have B rows, or 1 row shared by all targets."""
        n = items.shape[0]
        attends = self.inferred is not None and self.inferred.attention is not None and inf_items is not None
        lookups = [items, hist_items] + ([inf_items] if attends else [])
        target, history, *inferred = self.item_encoder.lookup(*lookups)  # [B, D], [U, L, D] (U = B or 1), [U, K, D]
        mask = hist_items > 0  # [U, L]
        if self.action_embedding is not None:
            history = history + self.action_embedding(hist_actions) * mask.unsqueeze(-1)
        pooled = self.attention(target, history, mask)  # [B, D]
        mean = history.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # [U, D] the user's overall taste
        features = [target, pooled, mean.expand(n, -1)]
        if self.user_embeddings:
            codes = self.user_features[users]  # [U, F]
            features += [emb(codes[:, i]).expand(n, -1) for i, emb in enumerate(self.user_embeddings)]
        if self.inferred is not None:
            if inf_items is None or inf_conf is None:
                raise KeyError("inf_items: this DIN reads inferred behaviours (model.inferred); batch them with the gbr step's table")
            features.append(self.inferred(items, target, inf_items, inferred[0] if inferred else None, inf_conf))
        return self.mlp(torch.cat(features, dim=-1)).squeeze(-1)  # [B] logits


def build_din(data: SequenceData, cfg: ModelConfig, tables: KnowledgeTables | None = None) -> DIN:
    """DIN over the dataset's items, actions and user features, plus the RER parts, as the config enables them.

    `tables` are RER's knowledge tables; without them, enabled RER parts read `cfg.knowledge_tables`.
    """
    extra = build_knowledge_parts(cfg, tables, data.n_items, cfg.embedding_dim)
    gated = KNOWLEDGE_PART if isinstance(extra.get(KNOWLEDGE_PART), AlignedKnowledgePart) else None
    encoder = build_item_encoder(data, cfg.embedding_dim, cfg.use_item_features, cfg.item_fusion, extra, gated, cfg.id_dropout if gated else 0.0, cfg.id_regression if gated else 0.0)
    use_users = cfg.use_user_features and data.user_features.shape[1] > 0
    sizes = data.user_feature_sizes if use_users else []
    return DIN(encoder, data.n_actions, torch.from_numpy(data.user_features), sizes, cfg)
