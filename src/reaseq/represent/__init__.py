"""RER: knowledge texts -> sentence vectors -> vectors aligned with the collaborative space -> semantic IDs.

Names are imported lazily, so that `reaseq.config` can import `reaseq.represent.config` without pulling in
torch, scikit-learn and the data package (which imports `reaseq.config` back).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Alignment": "align", "Projection": "align", "load_projection": "align", "popularity_gate": "align",
    "save_projection": "align", "train_alignment": "align",
    "AlignConfig": "config", "EncoderConfig": "config", "RepresentConfig": "config", "SemanticIdConfig": "config",
    "cooccurrence_embeddings": "cooccurrence",
    "encode_texts": "encode", "model_identity": "encode",
    "SemanticIds": "semantic_ids",  # the function semantic_ids shares its module's name: import it from there
    "KnowledgeTables": "tables", "build_tables": "tables", "load_tables": "tables", "save_tables": "tables",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
