"""The masked diffusion language model over behaviour tokens (LLaDA-style bidirectional transformer)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from torch import nn

from reaseq.errors import InputError
from reaseq.gbr.config import GBRConfig

PAD = 0
# Standard deviation of the random token/position initialisation (as in SASRec and GPT-2); mapped knowledge
# vectors are rescaled to it so that a warm start does not change the scale the transformer trains at.
INIT_STD = 0.02


def mask_token(n_items: int) -> int:
    """Id of the MASK token: one past the last item."""
    return n_items + 1


def map_embeddings(init: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Map item vectors [n_items + 1, d_in] to the model width [n_items + 1, dim] with a fixed linear map.

    Row 0 (padding) is ignored and returned as zeros. Wider inputs keep their top-`dim` principal
    components (PCA fitted on the item rows: the linear map that preserves most of their geometry);
    narrower inputs are centred and copied into the first d_in coordinates (an isometry, the rest zero;
    the model keeps its random initialisation there). The used coordinates are scaled to standard
    deviation INIT_STD, the scale of the default random initialisation.
    """
    items = np.asarray(init, dtype=np.float64)[1:]
    n, d_in = items.shape
    mapped = np.zeros((n, dim), dtype=np.float64)
    if d_in > dim:
        n_comp = min(dim, n)
        mapped[:, :n_comp] = PCA(n_components=n_comp, random_state=seed).fit_transform(items)
    else:
        mapped[:, :d_in] = items - items.mean(axis=0)
    std = mapped[:, mapped.std(axis=0) > 0].std() if mapped.any() else 0.0
    if std > 0:
        mapped *= INIT_STD / std
    return np.vstack([np.zeros((1, dim)), mapped]).astype(np.float32)


class MaskedDiffusionLM(nn.Module):
    """Bidirectional transformer over item tokens (PAD = 0, items 1..n_items, MASK = n_items + 1) with a tied item head."""

    def __init__(self, n_items: int, cfg: GBRConfig, init_embeddings: np.ndarray | None = None) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = cfg.max_len
        self.token_embedding = nn.Embedding(n_items + 2, cfg.dim, padding_idx=PAD)
        self.position_embedding = nn.Embedding(cfg.max_len, cfg.dim)
        nn.init.normal_(self.token_embedding.weight, std=INIT_STD)
        nn.init.normal_(self.position_embedding.weight, std=INIT_STD)
        with torch.no_grad():
            self.token_embedding.weight[PAD].zero_()
            if init_embeddings is not None:
                mapped = torch.from_numpy(self._checked_init(init_embeddings, cfg))
                used = mapped.abs().sum(dim=0) > 0  # coordinates the map leaves empty keep their random start
                self.token_embedding.weight[1 : n_items + 1, used] = mapped[1:, used]
        # A per-item output bias lets the head carry item frequency, so attention can spend itself on taste.
        self.output_bias = nn.Parameter(torch.zeros(n_items + 1))
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, dim_feedforward=4 * cfg.dim, dropout=cfg.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def _checked_init(self, init: np.ndarray, cfg: GBRConfig) -> np.ndarray:
        array = np.asarray(init)
        if array.ndim != 2 or array.shape[0] != self.n_items + 1:
            raise InputError(None, "init_embeddings", f"shape {array.shape} does not match [n_items + 1 = {self.n_items + 1}, d]", "pass one row per item id, row 0 for padding (e.g. RER's aligned vectors)")
        if not np.isfinite(array).all():
            raise InputError(None, "init_embeddings", "contains NaN or infinite values", "recompute the aligned vectors or drop the warm start")
        return map_embeddings(array, cfg.dim, cfg.seed)

    def init_output_bias(self, counts: np.ndarray) -> None:
        """Start the output bias at the centred log frequency of each item (+1 smoothing): the head begins as a popularity model."""
        log_freq = np.log1p(np.asarray(counts, dtype=np.float64)[: self.n_items + 1])
        with torch.no_grad():
            self.output_bias.copy_(torch.from_numpy(log_freq - log_freq[1:].mean()).float())

    def hidden(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual states [B, L, D] of right-padded token rows [B, L]; padding is never attended to."""
        pad_mask = tokens == PAD if pad_mask is None else pad_mask
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.dropout(self.token_embedding(tokens) + self.position_embedding(positions))
        h = self.encoder(x, src_key_padding_mask=pad_mask)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores [..., n_items + 1] over PAD and the items (the MASK token is never a prediction)."""
        return hidden @ self.token_embedding.weight[: self.n_items + 1].T + self.output_bias

    def forward(self, tokens: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, n_items + 1] at every position of tokens [B, L]."""
        return self.logits(self.hidden(tokens, pad_mask))
