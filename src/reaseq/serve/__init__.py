"""Real-time serving: load a trained ranker, keep lookup tables in memory, score candidates over HTTP.

`reaseq.serve.app` (FastAPI) and `reaseq.serve.export` (ONNX) are imported on demand: the web and ONNX
libraries are only needed by the server and the exporter.
"""

from __future__ import annotations

from reaseq.serve.config import ServeConfig
from reaseq.serve.loader import build_ranker, load_ranker
from reaseq.serve.scorer import Scorer, UnknownIdsError
from reaseq.serve.tables import (
    RefreshError,
    ServingTables,
    TableStore,
    build_tables,
    tables_from_data,
)

__all__ = [
    "RefreshError",
    "Scorer",
    "ServeConfig",
    "ServingTables",
    "TableStore",
    "UnknownIdsError",
    "build_ranker",
    "build_tables",
    "load_ranker",
    "tables_from_data",
]
