"""Train and evaluate rankers on the `ctr` protocol."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from reaseq.config import RunConfig
from reaseq.data.batches import CTRBatcher, history_lengths, item_train_counts
from reaseq.data.dataset import SequenceData
from reaseq.data.protocols import TEST, TRAIN, VALID, CTRSamples
from reaseq.errors import ConfigError
from reaseq.evaluate.metrics import ctr_metrics
from reaseq.evaluate.slices import ctr_slices
from reaseq.gbr.augment import InferredBehaviours, load_inferred
from reaseq.rank import distributed
from reaseq.rank.fit import FitResult, fit
from reaseq.rank.models.din import build_din
from reaseq.rank.models.popularity import PopularityCTR
from reaseq.represent.tables import KnowledgeTables

log = logging.getLogger("reaseq")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; return a generator for data order."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def predict_ctr(model: nn.Module, batcher: CTRBatcher, samples: CTRSamples, batch_size: int) -> np.ndarray:
    """Click probabilities for the samples, in order."""
    model.eval()
    out = []
    with torch.no_grad():
        for batch in batcher.iterate(samples, batch_size):
            out.append(torch.sigmoid(model(batch)).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def ctr_report(data: SequenceData, samples: CTRSamples, probs: np.ndarray, item_pop: np.ndarray, cfg: RunConfig) -> dict[str, Any]:
    """Headline metrics and the history-length / item-popularity slices of one split."""
    return {
        "metrics": ctr_metrics(samples.user, samples.label, probs),
        "slices": ctr_slices(
            samples.user, samples.label, probs, history_lengths(data, samples), item_pop[samples.item],
            cfg.evaluate.history_buckets, cfg.evaluate.popularity_buckets,
        ),
    }


def take_auxiliary_loss(model: nn.Module) -> torch.Tensor | None:
    """The sum of the extra losses the model's modules collected in the last forward (e.g. model.id_regression), or None."""
    losses = [loss for module in model.modules() if hasattr(module, "take_auxiliary_loss") and (loss := module.take_auxiliary_loss()) is not None]
    return torch.stack(losses).sum() if losses else None


def train_ctr_epoch(model: nn.Module, batcher: CTRBatcher, samples: CTRSamples, optimizer: torch.optim.Optimizer, cfg: RunConfig, generator: torch.Generator, epoch: int, ctx: distributed.DistContext = distributed.SINGLE) -> tuple[float, int]:
    """One pass over the training samples (this rank's share under DDP); returns (mean loss over ranks, samples seen by all)."""
    loss_fn = nn.BCEWithLogitsLoss()
    total, batches = 0.0, 0
    # Under DDP train.batch_size stays the global batch: each rank takes its share of every batch (see rank.distributed).
    batch_size = distributed.local_batch_size(cfg.train.batch_size, ctx)
    n_local = len(distributed.shard_indices(torch.arange(len(samples)), ctx))
    n_batches = (n_local + batch_size - 1) // batch_size
    progress = tqdm(batcher.iterate(samples, batch_size, shuffle=True, generator=generator, part=ctx.part), total=n_batches, desc=f"epoch {epoch}", disable=not cfg.train.progress, leave=False)
    for batch in progress:
        loss = loss_fn(model(batch), batch["label"])
        extra = take_auxiliary_loss(model)
        if extra is not None:
            loss = loss + extra
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        batches += 1
        if batches % 50 == 0:
            progress.set_postfix(loss=f"{total / batches:.4f}")
    return distributed.all_reduce_mean(total / max(batches, 1), ctx), len(samples)


def inferred_for(cfg: RunConfig, data: SequenceData) -> InferredBehaviours:
    """The inferred-behaviour table a DIN with `model.inferred` reads, from `model.inferred_table`."""
    if cfg.model.inferred_table is None:
        raise ConfigError(None, "model.inferred_table", "model.inferred is on but no inferred-behaviour table is named", "run `reaseq gbr` first (the pipeline then points the ranker at <run>/gbr/inferred.parquet)")
    return load_inferred(cfg.model.inferred_table, data.n_users, data.n_items)


def hide_items(data: SequenceData, hidden: np.ndarray) -> SequenceData:
    """The same sequences with the `hidden` item ids replaced by padding (0): they vanish from the histories."""
    is_hidden = np.zeros(data.n_items + 1, bool)
    is_hidden[np.asarray(hidden, np.int64)] = True
    return replace(data, items=np.where(is_hidden[data.items], 0, data.items))


def run_ctr(
    data: SequenceData,
    samples: CTRSamples,
    cfg: RunConfig,
    seed: int,
    out_dir: Path | None = None,
    tables: KnowledgeTables | None = None,
    train_hidden_items: np.ndarray | None = None,
    test_subsets: dict[str, np.ndarray] | None = None,
    inferred: InferredBehaviours | None = None,
) -> dict[str, Any]:
    """Fit one model on train, select on valid, report valid and test; the result row of one seed.

    `tables`: RER's knowledge tables for a DIN with knowledge parts (else `model.knowledge_tables` is read).
    `train_hidden_items`: item ids masked out of the training histories (the cold-start protocol: the ID part
    never sees them); validation and test histories stay as logged. `test_subsets`: name -> boolean mask over
    `samples`; each adds the metrics of the test samples it selects under result["test_subsets"][name].
    `inferred`: GBR's inferred behaviours for a DIN with `model.inferred` (else `model.inferred_table` is read).
    """
    started = time.perf_counter()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    generator = seed_everything(seed)
    train, valid, test = samples.of(TRAIN), samples.of(VALID), samples.of(TEST)
    item_pop = item_train_counts(data, np.unique(train.pos))
    fit_result = FitResult()

    if cfg.model.name == "popularity":
        model = PopularityCTR(data.n_items).fit(train.item, train.label)
        valid_probs, test_probs = model.predict(valid.item), model.predict(test.item)
    elif cfg.model.name == "din":
        if cfg.model.inferred and inferred is None:
            inferred = inferred_for(cfg, data)
        device = torch.device(cfg.train.device)
        ctx = distributed.init_from_env(device)  # under torchrun: join the group (and pick this rank's GPU) before moving the model
        model = build_din(data, cfg.model, tables).to(device)
        behaviours = inferred if cfg.model.inferred else None
        batcher = CTRBatcher(data, cfg.protocol.ctr.max_len, behaviours, device)
        train_batcher = batcher if train_hidden_items is None else CTRBatcher(hide_items(data, train_hidden_items), cfg.protocol.ctr.max_len, behaviours, device)
        net = distributed.wrap_model(model, ctx)  # trains through DDP; validation, test and checkpoints use `model` itself
        if ctx.world_size > 1:
            torch.manual_seed(distributed.rank_seed(seed, ctx))  # each rank its own dropout masks
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

        def validate() -> float:
            # Every rank scores the whole validation set with the same weights; the mean makes the early-stopping
            # inputs bit-identical across ranks, so no rank stops while another trains on (and waits forever).
            return distributed.all_reduce_mean(ctr_metrics(valid.user, valid.label, predict_ctr(model, batcher, valid, cfg.train.eval_batch_size))["auc"], ctx)

        checkpoint = out_dir / "model.pt" if out_dir and ctx.is_main else None
        fit_result = fit(model, lambda epoch: train_ctr_epoch(net, train_batcher, train, optimizer, cfg, generator, epoch, ctx), validate, cfg.train, checkpoint)
        valid_probs = predict_ctr(model, batcher, valid, cfg.train.eval_batch_size)
        test_probs = predict_ctr(model, batcher, test, cfg.train.eval_batch_size)
    else:
        raise ValueError(f"model '{cfg.model.name}' is not a ctr model; use popularity or din")

    subsets = {}
    for name, mask in (test_subsets or {}).items():
        chosen = np.asarray(mask, bool)[samples.split == TEST]
        subsets[name] = ctr_report(data, test.take(chosen), test_probs[chosen], item_pop, cfg)
    return {
        "model": cfg.model.name,
        "seed": seed,
        "valid": ctr_report(data, valid, valid_probs, item_pop, cfg),
        "test": ctr_report(data, test, test_probs, item_pop, cfg),
        **({"test_subsets": subsets} if subsets else {}),
        "best_epoch": fit_result.best_epoch,
        "epochs_run": fit_result.epochs_run,
        "curves": fit_result.curves,
        "train_samples": len(train),
        "train_samples_per_s": fit_result.train_samples_per_s,
        "train_seconds": fit_result.train_seconds,
        "wall_s": time.perf_counter() - started,
    }
