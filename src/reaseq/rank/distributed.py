"""PyTorch DDP under `torchrun`: process group, model wrapping, each rank's share of the data, small collectives.

Every helper is a no-op in a single process (world size 1), so training code calls them unconditionally.
Sharding keeps the config's `batch_size` the global batch (samples per optimiser step over all ranks): each
rank takes every world_size-th index of the shared shuffled order and batches of batch_size / world_size, so
its j-th batch together with the other ranks' j-th batches is exactly the j-th batch of a single process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reaseq.data.batches import shard_order

log = logging.getLogger("reaseq")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group: rank, number of ranks, GPU index on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, results and reports."""
        return self.rank == 0

    @property
    def part(self) -> tuple[int, int] | None:
        """(rank, world_size) for CTRBatcher.iterate; None in a single process."""
        return (self.rank, self.world_size) if self.world_size > 1 else None


SINGLE = DistContext()


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend_for(device: str | torch.device) -> str:
    """The process-group backend for a training device: gloo on CPU, NCCL for CUDA tensors (gloo for CPU ones)."""
    # The small CPU collectives (loss, validation score) still need gloo when the model trains on NCCL.
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def current() -> DistContext:
    """The context of the process group already joined; a single process when there is none."""
    if not _initialised():
        return SINGLE
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device: str | torch.device = "cpu") -> DistContext:
    """Join the process group that torchrun describes in the environment (once); a single process without one."""
    if _initialised():
        return current()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        # Makes a plain "cuda" mean this rank's own GPU wherever the model or a batch is moved to it.
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend_for(device))
    ctx = current()
    log.info("ddp: rank %d of %d (local rank %d, backend %s)", ctx.rank, ctx.world_size, ctx.local_rank, dist.get_backend())
    return ctx


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """The model in DistributedDataParallel (gradients averaged over ranks), or the model itself alone."""
    if ctx.world_size == 1:
        return model
    # No device_ids, also on a GPU: DDP then leaves the inputs where they are. Batches are moved by their
    # batcher, and GBR's masking noise is drawn on CPU on purpose (the same masks on every device).
    return DistributedDataParallel(model)


class Objective(nn.Module):
    """`loss_fn(model, *args)` as the forward of a module: DDP averages the gradients of passes through its forward only."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., Any]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The loss (and whatever else loss_fn returns) of `model` on the arguments."""
        return self.loss_fn(self.model, *args, **kwargs)


def shard_indices(order: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """This rank's share of an order all ranks computed alike: every world_size-th entry, the same count on each rank."""
    return shard_order(order, ctx.rank, ctx.world_size)


def local_batch_size(batch_size: int, ctx: DistContext) -> int:
    """Each rank's part of a global batch of `batch_size` (at least one sample)."""
    return max(1, batch_size // ctx.world_size)


def rank_seed(seed: int, ctx: DistContext) -> int:
    """A seed of this rank's own: identical streams would give every rank the same dropout and noise masks."""
    return seed if ctx.world_size == 1 else seed + 7919 * (ctx.rank + 1)


def _reduce(value: float, op: dist.ReduceOp) -> float:
    # An NCCL-only group (one a caller set up) reduces CUDA tensors only.
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    """The mean of `value` over ranks (the same float on every rank)."""
    return value if ctx.world_size == 1 else _reduce(value, dist.ReduceOp.SUM) / ctx.world_size


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    """The sum of `value` over ranks."""
    return value if ctx.world_size == 1 else _reduce(value, dist.ReduceOp.SUM)


def barrier(ctx: DistContext) -> None:
    """Wait until every rank got here."""
    if ctx.world_size > 1:
        dist.barrier()


def log_on_main_only(ctx: DistContext) -> None:
    """On ranks other than 0, drop the run-log file handler and keep only warnings: rank 0 speaks for the run."""
    if ctx.is_main:
        return
    logger = logging.getLogger("reaseq")
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.WARNING)


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if _initialised():
        dist.destroy_process_group()
