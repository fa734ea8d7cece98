"""Dataset loaders: each turns one source format into the canonical RawTables.

This module holds `load_raw`, the dispatcher; `reading.py` holds the helpers every loader shares,
so that all formats report bad input the same way: file, field and fix.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from reaseq.config import DatasetConfig
from reaseq.data.tables import RawTables, validate
from reaseq.errors import ConfigError, InputError

# dataset.loader -> module under reaseq.data.loaders; `embedded` is the atomic loader on fetched files.
LOADER_MODULES: dict[str, str] = {
    "recbole_atomic": "atomic",
    "movielens_raw": "movielens",
    "amazon2023": "amazon",
    "taobao": "taobao",
    "tabular": "tabular",
}
EMBEDDED_LOADER = "embedded"


def load_raw(cfg: DatasetConfig, cache_dir: Path) -> RawTables:
    """Load the dataset the config names and return validated canonical tables."""
    if cfg.loader == EMBEDDED_LOADER:
        # Imported here: fetch pulls in subprocess/zip handling that only the embedded sets need.
        from reaseq.data.fetch import embedded_path

        folder = embedded_path(cfg.name, cache_dir)
        cfg = cfg.model_copy(update={"loader": "recbole_atomic", "path": folder, "interactions": None, "items": None, "users": None})
    module_name = LOADER_MODULES.get(cfg.loader)
    if module_name is None:
        known = sorted([EMBEDDED_LOADER, *LOADER_MODULES])
        raise ConfigError(None, "dataset.loader", f"unknown loader '{cfg.loader}'", f"set dataset.loader to one of {known}")
    if cfg.path is None:
        raise ConfigError(None, "dataset.path", f"the '{cfg.loader}' loader needs a path", "set dataset.path to the dataset file or folder")
    if not Path(cfg.path).exists():
        raise InputError(cfg.path, "dataset.path", "this path does not exist", "set dataset.path to an existing file or folder")
    # Loader modules are imported lazily: only the format in use is loaded.
    module = importlib.import_module(f"{__name__}.{module_name}")
    return validate(module.load(cfg))
