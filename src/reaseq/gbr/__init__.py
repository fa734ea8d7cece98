"""Generative Behavior Reasoning (GBR): a masked diffusion model that infers beyond-log behaviours."""

from __future__ import annotations

from reaseq.gbr.augment import (
    ctr_train_rows,
    inferred_table,
    read_inferred_table,
    write_inferred_table,
)
from reaseq.gbr.beyond_log import (
    BeyondLogSplit,
    build_beyond_log,
    evaluate_lists,
    set_metrics,
)
from reaseq.gbr.config import BeyondLogConfig, GBRConfig
from reaseq.gbr.infer import generation_quality, infer, quality_vs_steps
from reaseq.gbr.model import MaskedDiffusionLM, map_embeddings, mask_token
from reaseq.gbr.train import load_gbr, save_gbr, train_gbr

__all__ = [
    "BeyondLogConfig", "BeyondLogSplit", "GBRConfig", "MaskedDiffusionLM", "build_beyond_log", "ctr_train_rows", "evaluate_lists",
    "generation_quality", "infer", "inferred_table", "load_gbr", "map_embeddings", "mask_token", "quality_vs_steps",
    "read_inferred_table", "save_gbr", "set_metrics", "train_gbr", "write_inferred_table",
]
