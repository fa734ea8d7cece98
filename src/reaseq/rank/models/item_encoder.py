"""Item representation as a sum (or concatenation) of switchable parts (ID, genres, year; RER adds knowledge and semantic IDs,
see knowledge_parts.py), with the ID and aligned-knowledge pair mixed by a popularity gate."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from reaseq.data.dataset import SequenceData


def per_unique(items: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn over the distinct ids only, spread back to [..., D]: a batch repeats items, and encoding costs per id."""
    unique, inverse = torch.unique(items, return_inverse=True)
    # index_select, not [inverse]: the latter's backward accumulates with atomics on CPU threads (not reproducible).
    return fn(unique).index_select(0, inverse.reshape(-1)).view(*items.shape, -1)


def id_regression_loss(id_vectors: torch.Tensor, knowledge_vectors: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted relative squared error sum w ||k - id||^2 / sum w ||id||^2, the ID side held fixed; 0 when no row has weight.

    Relative, so that its scale does not depend on the scale the ID embeddings train to. The weight is the popularity
    gate: an ID embedding is trusted as a target as far as training evidence backs it, and a cold item (gate 0) not at all.
    """
    target = id_vectors.detach()  # [..., D]
    weight = weight.unsqueeze(-1)  # [..., 1]
    norm = (weight * target.pow(2)).sum()
    # No branch on the value (no device sync): with no weight the numerator is 0 as well, so the loss is 0.
    return (weight * (knowledge_vectors - target).pow(2)).sum() / norm.clamp(min=torch.finfo(norm.dtype).tiny)


class IdPart(nn.Module):
    """A learned embedding per item id (0 = padding)."""

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.embedding(items)


class GenrePart(nn.Module):
    """Mean of the item's genre embeddings, looked up from a fixed item -> genres table."""

    def __init__(self, item_genres: torch.Tensor, n_genres: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.register_buffer("item_genres", item_genres, persistent=False)  # [n_items + 1, G]
        self.embedding = nn.Embedding(n_genres + 1, dim, padding_idx=0)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        genres = self.item_genres[items]  # [..., G]
        summed = self.embedding(genres).sum(-2)
        count = (genres > 0).sum(-1, keepdim=True).clamp(min=1)
        return summed / count


class YearPart(nn.Module):
    """An embedding of the item's release year (0 = unknown)."""

    def __init__(self, item_year: torch.Tensor, n_years: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.register_buffer("item_year", item_year, persistent=False)  # [n_items + 1]
        self.embedding = nn.Embedding(n_years + 1, dim, padding_idx=0)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.item_year[items])


class ItemEncoder(nn.Module):
    """Sums (or concatenates) the enabled parts; padding items map to zeros.

    Gated fusion: when `gated` names a part (RER's aligned knowledge) that has a `gate_of(items)` method, that
    part and the ID part are first mixed as gate * id + (1 - gate) * knowledge, with the part's per-item gate
    (count / (count + pivot) from training interactions). The mix then counts as one part: the other parts are
    summed with (or concatenated to) it as usual. An item never seen in training has gate 0, so its untrained
    ID embedding is multiplied by exactly zero and it is represented by its knowledge (and the other parts) alone.
    `id_dropout`: in training, that share of the items with knowledge get gate 0 too (each call draws per id it is
    given; `lookup` gives each distinct id once), so that knowledge-only vectors are not new to the layers above
    when a cold item arrives.
    `id_regression`: in training, the gated part's vectors of the items with knowledge are also regressed on their ID
    embeddings, weighted by the gate (a loss collected with `take_auxiliary_loss`), so that the vector a cold item
    gets from its knowledge alone resembles an ID embedding.
    """

    def __init__(self, parts: dict[str, nn.Module], fusion: str = "sum", gated: str | None = None, id_dropout: float = 0.0, id_regression: float = 0.0) -> None:
        super().__init__()
        if gated is not None and ("id" not in parts or gated not in parts or not hasattr(parts[gated], "gate_of")):
            raise ValueError(f"gated fusion needs an 'id' part and a part '{gated}' with a gate_of method, got {list(parts)}")
        self.parts = nn.ModuleDict(parts)
        self.fusion = fusion
        self.gated = gated
        self.id_dropout = id_dropout
        self.id_regression = id_regression
        self._auxiliary: torch.Tensor | None = None
        self.dedupe_lookups = True  # False: encode every slot (the slower path; benchmarks/train_speed.py compares them)
        blocks = [name for name in parts if name != gated]  # the gated pair takes the ID part's place
        dims = [parts[name].out_dim for name in blocks]
        if fusion == "sum" and len(set(dims)) > 1:
            raise ValueError(f"sum fusion needs parts of one width, got {dims}")
        if gated is not None and parts[gated].out_dim != parts["id"].out_dim:
            raise ValueError(f"the gated part '{gated}' must have the ID part's width {parts['id'].out_dim}, got {parts[gated].out_dim}")
        self.out_dim = dims[0] if fusion == "sum" else sum(dims)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        # items [...] -> [..., out_dim]
        vectors = []
        for name, part in self.parts.items():
            if name == self.gated:
                continue
            vector = part(items)
            if name == "id" and self.gated is not None:
                knowledge = self.parts[self.gated]
                gate = knowledge.gate_of(items)  # [...]
                knowledge_vector = knowledge(items)  # [..., D]
                if self.training and self.id_regression > 0:
                    self._add_auxiliary(self.id_regression * id_regression_loss(vector, knowledge_vector, gate * (knowledge.has_knowledge[items] & (items > 0))))
                if self.training and self.id_dropout > 0:
                    dropped = (torch.rand(items.shape, device=items.device) < self.id_dropout) & knowledge.has_knowledge[items]
                    gate = gate.masked_fill(dropped, 0.0)
                gate = gate.unsqueeze(-1)  # [..., 1]
                vector = gate * vector + (1 - gate) * knowledge_vector
            vectors.append(vector)
        out = torch.stack(vectors).sum(0) if self.fusion == "sum" else torch.cat(vectors, dim=-1)
        return out * (items > 0).unsqueeze(-1)

    def _add_auxiliary(self, loss: torch.Tensor) -> None:
        self._auxiliary = loss if self._auxiliary is None else self._auxiliary + loss

    def take_auxiliary_loss(self) -> torch.Tensor | None:
        """The extra training loss the forward passes since the last call left (None without one), and forget it."""
        loss, self._auxiliary = self._auxiliary, None
        return loss

    def lookup(self, *ids: torch.Tensor) -> list[torch.Tensor]:
        """The vectors of several id tensors at once, each distinct item encoded once: [...] -> [..., out_dim] each.

        A training batch repeats items many times (1,024 targets and 51,200 history slots over a few thousand
        items), and the backward pass of an embedding lookup costs per slot. Encoding the distinct ids and
        gathering gives the same vectors with one cheap gather backward; with ID dropout, an item's gate is
        then dropped for all its slots of the batch together.
        """
        if not self.dedupe_lookups or torch.onnx.is_in_onnx_export():  # an exported graph has no data-dependent shapes
            return [self(t) for t in ids]
        vectors = per_unique(torch.cat([t.reshape(-1) for t in ids]), self)  # [N, D]
        return [v.view(*t.shape, -1) for v, t in zip(vectors.split([t.numel() for t in ids]), ids)]


def build_item_encoder(data: SequenceData, dim: int, use_item_features: bool, fusion: str = "sum",
                       extra: dict[str, nn.Module] | None = None, gated: str | None = None, id_dropout: float = 0.0, id_regression: float = 0.0) -> ItemEncoder:
    """ID embedding plus, when enabled and present in the data, genre and year embeddings, plus `extra` parts (RER).

    `gated` names the extra part mixed with the ID part by its popularity gate (see ItemEncoder).
    """
    parts: dict[str, nn.Module] = {"id": IdPart(data.n_items, dim)}
    if use_item_features and data.n_genres:
        parts["genre"] = GenrePart(torch.from_numpy(data.item_genres), data.n_genres, dim)
    if use_item_features and data.n_years:
        parts["year"] = YearPart(torch.from_numpy(data.item_year), data.n_years, dim)
    parts.update(extra or {})
    return ItemEncoder(parts, fusion, gated, id_dropout, id_regression)
