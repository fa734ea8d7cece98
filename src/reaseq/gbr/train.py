"""LLaDA-style training of the masked diffusion model on users' training-split behaviour only."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from sklearn.decomposition import TruncatedSVD
from torch.nn import functional as F

from reaseq.config import TrainConfig
from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.gbr.config import GBRConfig
from reaseq.gbr.model import PAD, MaskedDiffusionLM, mask_token
from reaseq.rank import distributed
from reaseq.rank.fit import FitResult, fit, save_checkpoint

log = logging.getLogger("reaseq")

# A window needs a second token: a lone masked token has nothing to be inferred from.
MIN_WINDOW = 2


@dataclass
class Windows:
    """Training windows as row ranges [start, end) into a compacted item array, split into train and validation users."""

    items: torch.Tensor  # int64 [N'] the allowed rows' items, grouped by user in time order
    start: torch.Tensor  # int64 [W]
    end: torch.Tensor  # int64 [W]
    is_valid: torch.Tensor  # bool [W] the window belongs to a validation user
    max_len: int

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Token rows [B, max_len] of the windows `idx`: oldest item first, PAD on the right."""
        rows = self.start[idx].unsqueeze(1) + torch.arange(self.max_len)  # [B, L]
        real = rows < self.end[idx].unsqueeze(1)
        return self.items[rows.clamp(max=len(self.items) - 1)].masked_fill(~real, PAD)


@dataclass
class GBRTrainResult:
    """The training record: model selection by validation loss, curves, throughput."""

    fit: FitResult
    train_windows: int
    valid_windows: int
    train_tokens: int
    wall_s: float
    curves: dict[str, list[float]] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second over the training passes (validation excluded)."""
        return self.fit.train_samples_per_s


def check_rows(data: SequenceData, train_rows: np.ndarray) -> np.ndarray:
    """The boolean row mask, validated against the data."""
    rows = np.asarray(train_rows)
    if rows.dtype != bool or rows.shape != data.items.shape:
        raise InputError(None, "train_rows", f"expected a boolean mask of shape {data.items.shape}, got {rows.dtype} {rows.shape}", "pass e.g. TopKSplit.train_mask() or gbr.augment.ctr_train_rows(data, samples)")
    return rows


def _checked_items(items: np.ndarray, n_items: int) -> np.ndarray:
    array = np.asarray(items)
    if array.dtype != bool or array.shape != (n_items + 1,):
        raise InputError(None, "response_items", f"expected a boolean mask of shape ({n_items + 1},), got {array.dtype} {array.shape}", "pass one boolean per item id, e.g. BeyondLogSplit.off_platform")
    return array


def interaction_matrix(data: SequenceData, rows: np.ndarray) -> sparse.csr_matrix:
    """Binary user x item matrix [n_users, n_items + 1] of the given rows (a repeated event counts once)."""
    matrix = sparse.csr_matrix((np.ones(len(rows)), (data.users[rows], data.items[rows])), shape=(data.n_users, data.n_items + 1))
    matrix.data[:] = 1.0
    return matrix


def collaborative_init(data: SequenceData, train_rows: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Item vectors [n_items + 1, dim] from a truncated SVD of the binary user x item matrix of the allowed rows.

    Item factors are the right singular vectors scaled by sqrt(singular value): items used by the same
    users start close together, so training refines a sensible geometry instead of discovering it.
    """
    matrix = interaction_matrix(data, np.flatnonzero(check_rows(data, train_rows)))
    n_comp = max(1, min(dim, min(matrix.shape) - 1))
    svd = TruncatedSVD(n_components=n_comp, random_state=seed).fit(matrix)
    factors = np.zeros((data.n_items + 1, dim))
    factors[:, :n_comp] = svd.components_.T * np.sqrt(svd.singular_values_)
    return factors


def build_windows(data: SequenceData, train_rows: np.ndarray, cfg: GBRConfig) -> Windows:
    """Cut each user's allowed rows into windows of max_len, newest first; hold out cfg.valid_user_frac of the users."""
    visible = data.subset(check_rows(data, train_rows))  # only the allowed rows' items survive this line
    lengths = np.diff(visible.offsets)
    n_windows = np.ceil(lengths / cfg.max_len).astype(np.int64)
    user_of = np.repeat(np.arange(visible.n_users), n_windows)
    step = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    end = visible.offsets[user_of + 1] - step * cfg.max_len
    start = np.maximum(visible.offsets[user_of], end - cfg.max_len)
    keep = end - start >= MIN_WINDOW
    start, end, user_of = start[keep], end[keep], user_of[keep]
    users = np.unique(user_of)
    if len(users) < 2:
        raise InputError(None, "train_rows", f"only {len(users)} user(s) have {MIN_WINDOW}+ training events", "GBR needs several users with training behaviour (one is held out for validation)")
    rng = np.random.default_rng(cfg.seed)
    n_valid = min(len(users) - 1, max(1, round(cfg.valid_user_frac * len(users))))
    valid_users = rng.choice(users, size=n_valid, replace=False)
    return Windows(
        items=torch.from_numpy(visible.items), start=torch.from_numpy(start), end=torch.from_numpy(end),
        is_valid=torch.from_numpy(np.isin(user_of, valid_users)), max_len=cfg.max_len,
    )


def prompt_response(tokens: torch.Tensor, cfg: GBRConfig, response_items: torch.Tensor | None, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewrite a cfg.response_frac share of the rows as LLaDA-SFT prompt/response pairs; returns (tokens, maskable [B, L]).

    A rewritten row keeps its prompt unmasked and only its response may be masked. With `response_items`
    the response is the row's items of that set, moved after the others (time order kept inside both),
    which mirrors inference: a history followed by slots restricted to those items. Without it, the
    response is the row's last U{1..k} items: the next behaviours. Other rows: every real token is maskable.
    """
    real = tokens != PAD
    chosen = torch.rand(tokens.shape[0], generator=generator) < cfg.response_frac  # [B]
    if response_items is not None:
        response = response_items[tokens] & real & chosen.unsqueeze(1)
        key = torch.where(real, response.long(), 2)  # prompt, then response, then padding
        order = torch.sort(key, dim=1, stable=True).indices
        tokens, response = tokens.gather(1, order), response.gather(1, order)
    else:
        lengths = real.sum(dim=1)
        n_response = 1 + (torch.rand(tokens.shape[0], generator=generator) * torch.clamp(torch.minimum(lengths - 1, torch.tensor(cfg.k)), min=1)).long()
        position = torch.arange(tokens.shape[1]).unsqueeze(0)
        response = real & chosen.unsqueeze(1) & (position >= (lengths - n_response).unsqueeze(1))
    has_response = response.any(dim=1, keepdim=True)
    return tokens, torch.where(has_response, response, real)


def mask_tokens(tokens: torch.Tensor, maskable: torch.Tensor, mask_id: int, eps: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA forward process: t ~ U(eps, 1) per row, each maskable token masked with probability t; returns (noisy, masked, t)."""
    t = eps + (1.0 - eps) * torch.rand(tokens.shape[0], generator=generator)  # [B]
    masked = (torch.rand(tokens.shape, generator=generator) < t.unsqueeze(1)) & maskable  # [B, L]
    return tokens.masked_fill(masked, mask_id), masked, t


def diffusion_loss(model: MaskedDiffusionLM, tokens: torch.Tensor, cfg: GBRConfig, generator: torch.Generator, response_items: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """LLaDA's objective: per row, sum of masked-token cross-entropies / (t * maskable length), averaged over rows."""
    tokens, maskable = prompt_response(tokens, cfg, response_items, generator)
    noisy, masked, t = mask_tokens(tokens, maskable, mask_token(model.n_items), cfg.eps, generator)
    # Noise is drawn on CPU (same masks on every device), then the batch moves to the model.
    device = model.output_bias.device
    tokens, maskable, noisy, masked, t = (x.to(device) for x in (tokens, maskable, noisy, masked, t))
    hidden = model.hidden(noisy)[masked]  # [n_masked, D]: the head runs only where there is a loss
    ce = F.cross_entropy(model.logits(hidden), tokens[masked], reduction="none")  # [n_masked]
    lengths = maskable.sum(dim=1).clamp(min=1)  # [B]
    # 1/t makes the loss an upper bound on the negative log-likelihood (LLaDA); "none" trades that for lower variance.
    scale = 1.0 / (t * lengths) if cfg.loss_weight == "inverse_t" else 1.0 / lengths
    weight = scale.unsqueeze(1).expand_as(masked)[masked]  # [n_masked]
    return (ce * weight).sum() / tokens.shape[0], int((tokens != PAD).sum())


def validation_loss(model: MaskedDiffusionLM, windows: Windows, cfg: GBRConfig, response_items: torch.Tensor | None = None) -> float:
    """The objective on the validation users' windows, with the same masks at every call (comparable across rounds)."""
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    idx = torch.nonzero(windows.is_valid).squeeze(1)
    total, rows = 0.0, 0
    with torch.no_grad():
        for offset in range(0, len(idx), cfg.infer_batch_size):
            batch = idx[offset : offset + cfg.infer_batch_size]
            loss, _ = diffusion_loss(model, windows.gather(batch), cfg, generator, response_items)
            total += float(loss) * len(batch)
            rows += len(batch)
    return total / max(rows, 1)


def round_sampler(n: int, per_round: int | None, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """Hands out the next `per_round` indices of a reshuffled-every-pass order (a full pass when per_round is None)."""
    state = {"order": torch.zeros(0, dtype=torch.long)}

    def next_round() -> torch.Tensor:
        size = per_round or n
        if len(state["order"]) < size:
            state["order"] = torch.cat([state["order"], torch.randperm(n, generator=generator)])
        chunk, state["order"] = state["order"][:size], state["order"][size:]
        return chunk

    return next_round


def train_gbr(
    data: SequenceData,
    train_rows: np.ndarray,
    cfg: GBRConfig,
    init_embeddings: np.ndarray | None = None,
    response_items: np.ndarray | None = None,
    eval_every: int | None = None,
    checkpoint: Path | None = None,
    select: Callable[[MaskedDiffusionLM], float] | None = None,
) -> tuple[MaskedDiffusionLM, GBRTrainResult]:
    """Fit GBR on the rows allowed by `train_rows`; keep the round with the lowest validation loss.

    Token embeddings start from `init_embeddings` (e.g. RER's aligned vectors) or, without them, from
    cfg.init. `response_items` (bool [n_items + 1]) names the items that prompt/response rows put in
    the response (see prompt_response); `eval_every` windows make a training round between validations
    (default: one full pass), so a time budget is honoured at a finer grain than an epoch. `select` scores the
    model after each round (higher is better; e.g. a task metric on held-out users) in place of minus the
    validation users' loss.
    """
    started = time.perf_counter()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    windows = build_windows(data, train_rows, cfg)
    train_idx = torch.nonzero(~windows.is_valid).squeeze(1)
    if init_embeddings is None and cfg.init == "svd":
        init_embeddings = collaborative_init(data, train_rows, cfg.dim, cfg.seed)
    model = MaskedDiffusionLM(data.n_items, cfg, init_embeddings)
    if cfg.popularity_bias:
        model.init_output_bias(np.bincount(windows.items.numpy(), minlength=data.n_items + 1))
    ctx = distributed.init_from_env(cfg.device)  # under torchrun: join the group (and pick this rank's GPU) before moving the model
    model.to(cfg.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # With ema_decay the optimiser trains `model` while `kept` (what is validated, selected and returned) follows
    # its moving average; without it they are the same module.
    kept = copy.deepcopy(model) if cfg.ema_decay > 0 else model
    next_round = round_sampler(len(train_idx), eval_every, generator)
    response = None if response_items is None else torch.from_numpy(_checked_items(response_items, data.n_items))
    # Under DDP (torchrun) the loss runs as the forward of the wrapped objective, so gradients are averaged over
    # ranks; each rank trains on its share of every round's windows, cfg.batch_size staying the global batch.
    objective = distributed.wrap_model(distributed.Objective(model, lambda m, tokens, noise: diffusion_loss(m, tokens, cfg, noise, response)), ctx)
    batch_size = distributed.local_batch_size(cfg.batch_size, ctx)
    noise = generator
    if ctx.world_size > 1:
        # The window order must match on every rank (it comes from `generator`); masks and dropout must not,
        # or the ranks' rows would share their noise.
        noise = torch.Generator().manual_seed(distributed.rank_seed(cfg.seed, ctx))
        torch.manual_seed(distributed.rank_seed(cfg.seed, ctx))

    def train_round(epoch: int) -> tuple[float, int]:
        order = distributed.shard_indices(train_idx[next_round()], ctx)
        total, tokens_seen, batches = 0.0, 0, 0
        for offset in range(0, len(order), batch_size):
            loss, n_tokens = objective(windows.gather(order[offset : offset + batch_size]), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if kept is not model:
                with torch.no_grad():
                    for average, weight in zip(kept.parameters(), model.parameters()):
                        average.lerp_(weight, 1.0 - cfg.ema_decay)
            total, tokens_seen, batches = total + loss.item(), tokens_seen + n_tokens, batches + 1
        return distributed.all_reduce_mean(total / max(batches, 1), ctx), int(distributed.all_reduce_sum(tokens_seen, ctx))

    def validate() -> float:
        if select is not None:
            return distributed.all_reduce_mean(select(kept), ctx)
        # Every rank scores all validation windows; the mean keeps early stopping bit-identical across ranks.
        return -distributed.all_reduce_mean(validation_loss(kept, windows, cfg, response), ctx)

    schedule = TrainConfig(epochs=cfg.epochs, patience=cfg.patience, time_budget_s=cfg.time_budget_s, progress=False)
    result = fit(kept, train_round, validate, schedule)
    model = kept
    record = GBRTrainResult(
        fit=result, train_windows=len(train_idx), valid_windows=int(windows.is_valid.sum()),
        train_tokens=int((windows.end - windows.start)[~windows.is_valid].sum()), wall_s=time.perf_counter() - started,
        curves={"train_loss": result.curves["train_loss"], **({"valid_loss": [-v for v in result.curves["valid"]]} if select is None else {"valid_score": result.curves["valid"]})},
    )
    model.cpu()  # inference and the saved weights live on CPU
    if checkpoint is not None and ctx.is_main:
        save_gbr(model, cfg, checkpoint)
    log.info("gbr: best round %d of %d, valid %s %.4f, %.0f tokens/s", result.best_epoch, result.epochs_run, "loss" if select is None else "score", -result.best_valid if select is None else result.best_valid, record.tokens_per_s)
    return model, record


def save_gbr(model: MaskedDiffusionLM, cfg: GBRConfig, path: Path) -> None:
    """Write weights and the config that rebuilds them, atomically."""
    save_checkpoint(model, path, {"config": cfg.model_dump(), "n_items": model.n_items})


def load_gbr(path: Path) -> tuple[MaskedDiffusionLM, GBRConfig]:
    """Rebuild a model written by save_gbr."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        cfg = GBRConfig.model_validate(state["meta"]["config"])
        model = MaskedDiffusionLM(int(state["meta"]["n_items"]), cfg)
        model.load_state_dict(state["state_dict"])
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise InputError(path, "state_dict", f"not a readable GBR checkpoint ({exc})", "re-run gbr-train to write it again") from None
    model.eval()
    return model, cfg
