"""Load a trained ranker from a run folder: resolved config, prepared data, checkpoint."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from reaseq.config import RunConfig, load_config
from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.errors import InputError
from reaseq.gbr.augment import load_inferred
from reaseq.io import sha256_file
from reaseq.rank.models.din import build_din

CONFIG_FILE = "config.yaml"
DATA_DIR = "data"
ITEMS_FILE = "items.parquet"
CHECKPOINT = "model.pt"
EMBED_TABLES = Path("embed") / "knowledge.npz"  # represent.step.tables_path, relative to the run
INFERRED_TABLE = Path("gbr") / "inferred.parquet"  # gbr.step.inferred_path, relative to the run
# The rankers the server can load; each scores (user, history, candidate item) -> click logit.
SERVABLE_MODELS = ("din",)


def build_ranker(data: SequenceData, cfg: RunConfig) -> nn.Module:
    """The run's ranker with fresh weights: the one place where serving constructs a model."""
    return build_din(data, cfg.model)


def with_run_tables(run_dir: Path, cfg: RunConfig) -> RunConfig:
    """The config with the run's own RER tables and GBR table named (as training resolved them), under run_dir."""
    update: dict[str, Path] = {}
    if (cfg.model.knowledge != "none" or cfg.model.semantic_ids) and cfg.model.knowledge_tables is None:
        update["knowledge_tables"] = Path(run_dir) / EMBED_TABLES
    if cfg.model.inferred and cfg.model.inferred_table is None:
        update["inferred_table"] = Path(run_dir) / INFERRED_TABLE
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)}) if update else cfg


def inferred_inputs(cfg: RunConfig) -> Callable[[SequenceData], dict[str, np.ndarray]] | None:
    """For a ranker with the inferred-behaviour attention: data -> per-user batch inputs read from GBR's table.

    Read again at every table refresh, so a new offline GBR table is picked up without a restart. At serving
    time every request comes after the table was made, so each user's row applies (as_of is for training).
    """
    if not cfg.model.inferred:
        return None
    path = Path(cfg.model.inferred_table)

    def read(data: SequenceData) -> dict[str, np.ndarray]:
        behaviours = load_inferred(path, data.n_users, data.n_items)
        return {"inf_items": behaviours.items, "inf_conf": behaviours.confidence}

    return read


def checkpoint_path(run_dir: Path, seed: int) -> Path:
    """Where training wrote the weights of one seed."""
    return Path(run_dir) / "train" / f"seed{seed}" / CHECKPOINT


def load_run_config(run_dir: Path) -> RunConfig:
    """The resolved config a run folder was trained with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(path, None, "not a run folder (no resolved config)", "pass the --run-dir of a run made by `reaseq train`")
    return load_config(path)


def load_run_data(run_dir: Path) -> SequenceData:
    """The prepared tables of a run folder."""
    folder = Path(run_dir) / DATA_DIR
    if not (folder / "vocab.json").is_file():
        raise InputError(folder, "vocab.json", "the run has no prepared data", "run `reaseq train` (or `reaseq prepare`) with this run folder first")
    return load_prepared(folder)


def _check_items_unchanged(run_dir: Path, seed: int) -> None:
    """The item catalogue must be the one the checkpoint was trained on: embedding rows are dense item ids."""
    manifest = Path(run_dir) / "manifest.json"
    if not manifest.is_file():
        return
    record = json.loads(manifest.read_text(encoding="utf-8")).get("steps", {}).get(f"train_seed{seed}", {})
    trained = record.get("inputs", {}).get(ITEMS_FILE)
    items = Path(run_dir) / DATA_DIR / ITEMS_FILE
    if trained and sha256_file(items) != trained:
        raise InputError(items, "item_id", "the item catalogue changed since the ranker was trained (dense item ids would point at other items)", "retrain with `reaseq train --force` before serving")


def load_ranker(run_dir: Path, seed: int | None = None) -> tuple[nn.Module, RunConfig, SequenceData]:
    """The trained ranker of one seed (the run's first by default) in eval mode, with its config and data."""
    run_dir = Path(run_dir)
    cfg = with_run_tables(run_dir, load_run_config(run_dir))
    if cfg.protocol.name != "ctr" or cfg.model.name not in SERVABLE_MODELS:
        raise InputError(
            run_dir / CONFIG_FILE, "model.name", f"a {cfg.protocol.name}/{cfg.model.name} run has no servable ranker",
            f"serve a run trained on the ctr protocol with model.name in {list(SERVABLE_MODELS)}",
        )
    seed = cfg.train.seeds[0] if seed is None else seed
    checkpoint = checkpoint_path(run_dir, seed)
    if not checkpoint.is_file():
        raise InputError(checkpoint, CHECKPOINT, f"the run has no trained ranker for seed {seed}", f"run `reaseq train --run-dir {run_dir}` first (trained seeds: {cfg.train.seeds})")
    data = load_run_data(run_dir)
    _check_items_unchanged(run_dir, seed)
    model = build_ranker(data, cfg)
    try:
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")["state_dict"]
        model.load_state_dict(state)
    except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(checkpoint, "state_dict", f"the checkpoint does not fit the run's model and data ({first})", "retrain with `reaseq train --force`") from None
    model.eval()
    return model, cfg, data
