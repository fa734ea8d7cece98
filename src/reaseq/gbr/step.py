"""The `gbr` step: train the diffusion model on early training behaviour and write the per-user inferred-behaviour table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


from reaseq.data.dataset import load_prepared
from reaseq.data.prepare import PREPARED_FILES
from reaseq.data.protocols import load_ctr_samples
from reaseq.errors import ConfigError, InputError
from reaseq.gbr.augment import gbr_rows, inferred_table, user_histories, write_inferred_table
from reaseq.gbr.infer import generation_quality
from reaseq.gbr.train import train_gbr
from reaseq.io import write_json
from reaseq.rank import distributed
from reaseq.runs import RunDir

log = logging.getLogger("reaseq")

DATA_DIR = "data"  # the prepare step's folder (pipeline.DATA_DIR)
CTR_SAMPLES_FILE = "ctr_samples.parquet"  # pipeline.CTR_SAMPLES_FILE
GBR_DIR = "gbr"
TABLE_FILE = "inferred.parquet"


def inferred_path(run: RunDir) -> Path:
    """Where the gbr step writes the inferred-behaviour table."""
    return run.root / GBR_DIR / TABLE_FILE


def run_gbr(run: RunDir, tables: Path | None = None, force: bool = False) -> Path:
    """Train GBR on each user's first `gbr.as_of_frac` of ctr training events and infer K items per user.

    `tables`: RER's tables (knowledge.npz); with gbr.init_from_knowledge their aligned vectors start the token
    embeddings (item-level vectors of the training rows: no per-user behaviour beyond GBR's own rows enters).
    Writes <run>/gbr/{inferred.parquet, model.pt, summary.json}; skipped when config and inputs are unchanged.
    """
    cfg = run.config
    if cfg.protocol.name != "ctr":
        raise ConfigError(None, "protocol.name", "the gbr step feeds the ctr ranker", "set protocol.name: ctr")
    data_dir = run.root / DATA_DIR
    if not (data_dir / "vocab.json").is_file():
        raise InputError(data_dir, "vocab.json", "this run has no prepared data", "run `reaseq prepare` with this config first")
    use_tables = tables is not None and cfg.gbr.init_from_knowledge
    if use_tables and not Path(tables).is_file():
        raise InputError(tables, None, "RER tables not found", "run `reaseq embed` first, or set gbr.init_from_knowledge: false")
    out = inferred_path(run)
    section = {"gbr": cfg.gbr.model_dump(exclude={"num_threads", "device"}), "ctr": cfg.protocol.ctr.model_dump()}
    inputs = [*(data_dir / f for f in (*PREPARED_FILES, CTR_SAMPLES_FILE)), *([Path(tables)] if use_tables else [])]
    key = run.step_key("gbr", section, inputs)
    if not force and run.is_done("gbr", key):
        log.info("gbr: up to date, skipped (use --force to redo)")
        return out
    ctx = distributed.init_from_env(cfg.gbr.device)
    if not ctx.is_main:
        # Under torchrun the other ranks only help train (DDP); rank 0 writes the model, the table and the manifest.
        from reaseq.represent.tables import load_tables

        data, samples = load_prepared(data_dir), load_ctr_samples(data_dir / CTR_SAMPLES_FILE)
        rows, _ = gbr_rows(data, samples, cfg.gbr.as_of_frac)
        train_gbr(data, rows, cfg.gbr, init_embeddings=load_tables(Path(tables)).aligned if use_tables else None)
        distributed.barrier(ctx)
        return out
    with run.step("gbr", key) as record:
        from reaseq.represent.tables import load_tables  # RER is optional here: import only when used

        data = load_prepared(data_dir)
        samples = load_ctr_samples(data_dir / CTR_SAMPLES_FILE)
        rows, as_of = gbr_rows(data, samples, cfg.gbr.as_of_frac)
        init = load_tables(Path(tables)).aligned if use_tables else None  # mapped to the model width by the model
        folder = out.parent
        model, result = train_gbr(data, rows, cfg.gbr, init_embeddings=init, checkpoint=folder / "model.pt")
        # Inferred where GBR trained (train_gbr hands the weights back on CPU), so a GPU run does not wait on CPU inference.
        table = inferred_table(model.to(cfg.gbr.device), data, rows, cfg.gbr, as_of=as_of)
        write_inferred_table(table, out)
        histories = user_histories(data, rows)
        quality = generation_quality(table["item"].to_numpy().reshape(data.n_users, cfg.gbr.k), histories, None, data.n_items)
        summary: dict[str, Any] = {
            "rows_seen": int(rows.sum()), "users": data.n_users, "k": cfg.gbr.k, "steps": cfg.gbr.steps, "as_of_frac": cfg.gbr.as_of_frac,
            "init": "rer_aligned" if use_tables else cfg.gbr.init, "best_round": result.fit.best_epoch, "rounds": result.fit.epochs_run,
            "valid_loss": -result.fit.best_valid, "tokens_per_s": result.tokens_per_s, "train_wall_s": result.wall_s,
            "mean_confidence": float(table["confidence"].mean()), **quality,
            "ranker_samples_note": "the ranker reads a user's row only for samples at rows >= as_of (after everything GBR saw)",
        }
        write_json(folder / "summary.json", summary)
        record.outputs = [f"{GBR_DIR}/{TABLE_FILE}", f"{GBR_DIR}/model.pt", f"{GBR_DIR}/summary.json"]
        record.metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        log.info("gbr: %d users x %d inferred items, validity %.3f, novelty %.3f", data.n_users, cfg.gbr.k, quality["validity"], quality["novelty"])
    distributed.barrier(ctx)  # the other ranks return once the table is written
    return out
