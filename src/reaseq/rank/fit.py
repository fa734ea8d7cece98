"""The training loop shared by every ranker: early stopping and model selection on validation only."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from reaseq.config import TrainConfig
from reaseq.io import write_with
from reaseq.rank import distributed

log = logging.getLogger("reaseq")


@dataclass
class FitResult:
    """What training produced: the best epoch by validation, curves and throughput."""

    best_epoch: int = -1
    best_valid: float = -math.inf
    epochs_run: int = 0
    curves: dict[str, list[float]] = field(default_factory=lambda: {"train_loss": [], "valid": []})
    train_seconds: list[float] = field(default_factory=list)
    train_samples: int = 0

    @property
    def train_samples_per_s(self) -> float:
        """Samples per second over the training passes only (validation excluded)."""
        total = sum(self.train_seconds)
        return self.train_samples * len(self.train_seconds) / total if total else 0.0


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> None:
    """Write the model's weights and metadata atomically."""
    write_with(path, lambda tmp: torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp))


def fit(
    model: nn.Module,
    train_epoch: Callable[[int], tuple[float, int]],
    validate: Callable[[], float],
    cfg: TrainConfig,
    checkpoint: Path | None = None,
) -> FitResult:
    """Train epoch by epoch; keep the weights of the best validation score; stop on patience or budget."""
    result = FitResult()
    best_state: dict | None = None
    waited = 0
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        tick = time.perf_counter()
        loss, n_samples = train_epoch(epoch)
        result.train_seconds.append(time.perf_counter() - tick)
        result.train_samples = n_samples
        model.eval()
        with torch.no_grad():
            score = validate()
        result.epochs_run = epoch + 1
        result.curves["train_loss"].append(loss)
        result.curves["valid"].append(score)
        improved = score > result.best_valid
        log.info("epoch %d: train loss %.4f, valid %.4f%s (%.0f samples/s)", epoch, loss, score, " *" if improved else "", n_samples / result.train_seconds[-1])
        if improved:
            result.best_valid, result.best_epoch, waited = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            if checkpoint is not None:
                save_checkpoint(model, checkpoint, {"epoch": epoch, "valid": score})
        else:
            waited += 1
            if waited >= cfg.patience:
                break
        # Under DDP every rank must stop after the same epoch (or the others wait forever): they agree on one clock.
        if cfg.time_budget_s is not None and distributed.all_reduce_mean(time.perf_counter() - started, distributed.current()) > cfg.time_budget_s:
            log.info("time budget of %.0fs reached after epoch %d", cfg.time_budget_s, epoch)
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
