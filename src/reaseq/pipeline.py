"""The staged, resumable steps behind the CLI: prepare -> knowledge -> embed -> gbr -> train -> evaluate."""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reaseq.config import RunConfig
from reaseq.data.batches import CTRBatcher, item_train_counts
from reaseq.data.card import build_card, write_card
from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.data.prepare import PREPARED_FILES, prepare_tables
from reaseq.data.protocols import (
    TEST,
    TRAIN,
    CTRSamples,
    TopKSplit,
    build_ctr_samples,
    build_topk_split,
    load_ctr_samples,
    save_ctr_samples,
)
from reaseq.evaluate.aggregate import aggregate_runs
from reaseq.evaluate.report import write_report
from reaseq.errors import ConfigError, InputError
from reaseq.io import write_json
from reaseq.rank import distributed
from reaseq.rank.ctr import ctr_report, inferred_for, predict_ctr, run_ctr
from reaseq.rank.models.din import build_din
from reaseq.rank.models.sasrec import build_sasrec
from reaseq.rank.topk import rank_targets, run_topk, topk_report
from reaseq.runs import RunDir, StepRecord

log = logging.getLogger("reaseq")

DATA_DIR = "data"
CTR_SAMPLES_FILE = "ctr_samples.parquet"


def _source_files(cfg: RunConfig) -> list[Path]:
    """The files a dataset is read from; their hashes are part of the prepare step's key."""
    path = cfg.dataset.path
    if cfg.dataset.loader == "embedded":
        from reaseq.data.fetch import embedded_path  # fetches (checksum-verified) on first use

        path = embedded_path(cfg.dataset.name, cfg.data_cache)
    if path is None:
        return []
    path = Path(path)
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []


def prepare(run: RunDir, force: bool = False) -> Path:
    """Load the dataset, write canonical tables, both protocol splits and the dataset card."""
    from reaseq.data.loaders import load_raw  # loaders pull in format-specific code only when needed

    cfg = run.config
    out = run.root / DATA_DIR
    section = {"dataset": cfg.dataset.model_dump(mode="json"), "ctr": cfg.protocol.ctr.model_dump(), "topk": cfg.protocol.topk.model_dump()}
    key = run.step_key("prepare", section, _source_files(cfg))
    if not force and run.is_done("prepare", key):
        log.info("prepare: up to date, skipped (use --force to redo)")
        return out
    with run.step("prepare", key) as record:
        # Everything is written to a staging folder and swapped in at the end: a crash leaves the old data whole.
        staging = run.root / f".{DATA_DIR}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        raw = load_raw(cfg.dataset, cfg.data_cache)
        counts = prepare_tables(raw, cfg.dataset, staging)
        data = load_prepared(staging)
        ctr = build_ctr_samples(data, cfg.protocol.ctr)
        save_ctr_samples(ctr, staging / CTR_SAMPLES_FILE)
        topk = build_topk_split(data, cfg.protocol.topk)
        prepared = {name: staging / name for name in (*PREPARED_FILES, CTR_SAMPLES_FILE)}
        card = build_card(data, ctr, topk, raw.sources, prepared, section)
        write_card(card, staging)
        swap_in(staging, out)
        record.outputs = [f"{DATA_DIR}/{name}" for name in (*PREPARED_FILES, CTR_SAMPLES_FILE, "card.json", "card.md")]
        record.metrics = counts
    return out


def swap_in(staging: Path, target: Path) -> None:
    """Replace the folder `target` by `staging` with renames only."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def load_data(run: RunDir) -> tuple[SequenceData, CTRSamples, TopKSplit]:
    """The prepared data and both protocols' splits of a run."""
    folder = run.root / DATA_DIR
    data = load_prepared(folder)
    return data, load_ctr_samples(folder / CTR_SAMPLES_FILE), build_topk_split(data, run.config.protocol.topk)


def protocol_text(cfg: RunConfig) -> str:
    """The protocol of a run in one paragraph, written next to every number."""
    if cfg.protocol.name == "ctr":
        p = cfg.protocol.ctr
        return (
            f"ctr: every event with >= {p.min_hist} earlier events is a sample; history = previous {p.max_len} events with their ratings; "
            f"label = rating >= {p.label_threshold}; per user the last {p.test_frac:.0%} of samples are test, the {p.valid_frac:.0%} before valid. "
            "Model selection on valid AUC only."
        )
    p = cfg.protocol.topk
    return (
        f"topk: leave-one-out by time (last event test, second-to-last valid), ranked against the full catalogue "
        f"({'earlier items masked' if p.exclude_seen else 'no masking of earlier items'}); history = previous {p.max_len} events. "
        f"Model selection on valid NDCG@{p.ks[0]} only."
    )


def embed(run: RunDir, records: Path | None = None, force: bool = False) -> Path:
    """RER tables (encoded, aligned, quantised knowledge) from the run's knowledge records or a given records file."""
    from reaseq.knowledge.step import records_path
    from reaseq.represent.step import run_embed

    return run_embed(run, records or records_path(run), force=force)


def gbr(run: RunDir, force: bool = False) -> Path:
    """GBR's inferred-behaviour table (training the diffusion model), its token embeddings from the run's RER tables if any."""
    from reaseq.gbr.step import run_gbr
    from reaseq.represent.step import tables_path

    tables = tables_path(run)
    return run_gbr(run, tables if tables.is_file() else None, force=force)


def _with_run_tables(run: RunDir) -> RunConfig:
    """The run's config, pointing knowledge parts at the run's own RER tables and the inferred part at its GBR table."""
    from reaseq.gbr.step import inferred_path
    from reaseq.represent.step import tables_path

    cfg = run.config
    update: dict[str, Any] = {}
    if (cfg.model.knowledge != "none" or cfg.model.semantic_ids) and cfg.model.knowledge_tables is None:
        update["knowledge_tables"] = tables_path(run)
    if cfg.model.inferred and cfg.model.inferred_table is None:
        update["inferred_table"] = inferred_path(run)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=update)}) if update else cfg


def train(run: RunDir, force: bool = False) -> dict[str, Any]:
    """Train the configured model for every seed (finished seeds are skipped), then aggregate and report."""
    cfg = _with_run_tables(run)
    # Under torchrun every rank trains (DDP); only rank 0 writes results, manifest records and reports.
    ctx = distributed.init_from_env(cfg.train.device)
    data, ctr, topk = load_data(run)
    active = cfg.protocol.ctr if cfg.protocol.name == "ctr" else cfg.protocol.topk
    section = {
        "model": cfg.model.model_dump(),
        "train": cfg.train.model_dump(exclude={"seeds", "progress"}),
        "protocol": {"name": cfg.protocol.name, **active.model_dump()},
        "evaluate": cfg.evaluate.model_dump(),
    }
    inputs = [run.root / DATA_DIR / name for name in (*PREPARED_FILES, CTR_SAMPLES_FILE)]
    if cfg.model.knowledge_tables is not None:  # the tables' content, not just their path, keys the step
        inputs += [p for p in (Path(cfg.model.knowledge_tables), Path(cfg.model.knowledge_tables).with_suffix(".json")) if p.exists()]
    if cfg.model.inferred_table is not None and Path(cfg.model.inferred_table).exists():
        inputs.append(Path(cfg.model.inferred_table))
    rows = []
    for seed in cfg.train.seeds:
        name = f"train_seed{seed}"
        key = run.step_key(name, section, inputs)
        seed_dir = run.root / "train" / f"seed{seed}"
        if not force and run.is_done(name, key):
            log.info("%s: up to date, skipped", name)
            rows.append(_read_json(seed_dir / "result.json"))
            continue
        with run.step(name, key) if ctx.is_main else nullcontext(StepRecord(key, [])) as record:
            seed_dir.mkdir(parents=True, exist_ok=True)
            if cfg.protocol.name == "ctr":
                result = run_ctr(data, ctr, cfg, seed, seed_dir)
            else:
                result = run_topk(topk, cfg, seed, seed_dir)
            if ctx.is_main:
                write_json(seed_dir / "result.json", result)
            record.outputs = [f"train/seed{seed}/result.json"] + ([f"train/seed{seed}/model.pt"] if (seed_dir / "model.pt").exists() else [])
            record.metrics = result["test"]["metrics"]
        rows.append(result)
    summary = summarise(cfg, rows)
    if ctx.is_main:
        write_json(run.root / "metrics.json", summary)
        write_report(run.root, f"{cfg.dataset.name} {cfg.protocol.name}: {cfg.model.name}", summary["test"], rows[0]["test"]["slices"], rows[0]["curves"], protocol_text(cfg))
    return summary


def summarise(cfg: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds of valid and test metrics, with throughput."""
    return {
        "dataset": cfg.dataset.name,
        "protocol": cfg.protocol.name,
        "protocol_text": protocol_text(cfg),
        "model": cfg.model.name,
        "seeds": [r["seed"] for r in rows],
        "valid": aggregate_runs([r["valid"]["metrics"] for r in rows]),
        "test": aggregate_runs([r["test"]["metrics"] for r in rows]),
        "best_epochs": [r["best_epoch"] for r in rows],
        "train_samples_per_s": sum(r["train_samples_per_s"] for r in rows) / len(rows),
        "wall_s": sum(r["wall_s"] for r in rows),
    }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def evaluate(run: RunDir) -> dict[str, Any]:
    """Re-score the test split with the saved checkpoints and write evaluation.json + report."""
    cfg = _with_run_tables(run)
    if not (run.root / DATA_DIR / "vocab.json").exists():
        raise InputError(run.root / DATA_DIR, "vocab.json", "this run has no prepared data", "run `reaseq train` (or `reaseq prepare`) with this config first")
    data, ctr, topk = load_data(run)
    results = []
    for seed in cfg.train.seeds:
        checkpoint = run.root / "train" / f"seed{seed}" / "model.pt"
        if cfg.model.name == "popularity":
            raise ConfigError(None, "model.name", "the popularity baseline has no checkpoint to re-score", "read its test metrics from metrics.json written by `reaseq train`")
        if not checkpoint.exists():
            raise InputError(checkpoint, "model.pt", "the checkpoint is missing", "run `reaseq train` with this config (and --run-dir) first")
        state = torch.load(checkpoint, weights_only=True)["state_dict"]
        if cfg.protocol.name == "ctr":
            model = build_din(data, cfg.model)
            model.load_state_dict(state)
            test = ctr.of(TEST)
            behaviours = inferred_for(cfg, data) if cfg.model.inferred else None
            probs = predict_ctr(model, CTRBatcher(data, cfg.protocol.ctr.max_len, behaviours), test, cfg.train.eval_batch_size)
            item_pop = item_train_counts(data, np.unique(ctr.of(TRAIN).pos))
            results.append({"seed": seed, "test": ctr_report(data, test, probs, item_pop, cfg)})
        else:
            net = build_sasrec(topk.data, cfg.protocol.topk.max_len, cfg.model)
            net.load_state_dict(state)
            net.eval()
            ranks = rank_targets(lambda seq: net(seq), topk, TEST, cfg)
            item_pop = item_train_counts(topk.data, topk.train_mask())
            results.append({"seed": seed, "test": topk_report(topk, ranks, TEST, item_pop, cfg)})
    summary = {"protocol_text": protocol_text(cfg), "seeds": cfg.train.seeds, "test": aggregate_runs([r["test"]["metrics"] for r in results])}
    write_json(run.root / "evaluation.json", summary)
    write_report(run.root / "evaluation", f"{cfg.dataset.name} {cfg.protocol.name}: {cfg.model.name} (re-evaluated)", summary["test"], results[0]["test"]["slices"], None, protocol_text(cfg))
    return summary
