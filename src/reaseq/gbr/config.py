"""Typed settings of Generative Behavior Reasoning (GBR) and of the beyond-log protocol that measures it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from reaseq.strict import Strict


class GBRConfig(Strict):
    """The masked diffusion model over behaviour tokens: architecture, LLaDA-style training, unmasking at inference."""

    # Architecture.
    dim: int = Field(64, ge=2)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_len: int = Field(50, ge=2)  # tokens per window; at inference history + k slots must fit
    popularity_bias: bool = False  # start the head's per-item bias at the log frequency of the training rows
    init: Literal["random", "svd"] = "svd"  # token embeddings when no aligned vectors are given: random, or SVD of the training rows
    # Training (LLaDA: t ~ U(eps, 1), each real token masked with probability t, loss weighted by 1/t).
    epochs: int = Field(50, ge=1)  # training rounds: full passes, or eval_every windows each (see train_gbr)
    batch_size: int = Field(64, ge=1)  # windows per optimiser step
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    # > 0: selection, inference and the saved weights use an exponential moving average of the trained weights
    # (updated after every step with this decay), which smooths the round-to-round noise of small-batch training.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    eps: float = Field(1e-3, gt=0.0, lt=1.0)  # lower end of the masking ratio: keeps the 1/t weight finite
    loss_weight: Literal["inverse_t", "none"] = "inverse_t"  # LLaDA's 1/t weight on masked tokens, or a plain mean
    response_frac: float = Field(0.0, ge=0.0, le=1.0)  # share of windows trained as prompt/response pairs (LLaDA SFT)
    valid_user_frac: float = Field(0.05, gt=0.0, lt=1.0)  # users whose windows only measure validation loss
    patience: int = Field(3, ge=1)  # rounds without validation improvement before stopping
    time_budget_s: float | None = None  # stop after the round that crosses this many seconds (validation included)
    seed: int = 0
    num_threads: int | None = None  # torch threads; None leaves torch's default
    device: str = "cpu"  # where training and the step's inference run ("cuda" on a GPU); the saved weights live on CPU
    # Inference: K masked slots unmasked over `steps` rounds.
    k: int = Field(20, ge=1)
    steps: int = Field(10, ge=1)
    temperature: float = Field(0.0, ge=0.0)  # 0 = argmax; > 0 samples with Gumbel noise on logits / temperature
    remasking: Literal["confidence", "random"] = "confidence"  # which slots to commit per round
    # What the slots condition on: the last max_len - k history items, or the whole history read in pieces of
    # that size whose predictions are averaged (long histories are then not truncated).
    context: Literal["recent", "all"] = "recent"
    infer_batch_size: int = Field(512, ge=1)  # users per forward pass
    # The pipeline step (`reaseq gbr`): which behaviour GBR sees and when the ranker may use what it infers.
    # GBR learns from, and infers from, the first `as_of_frac` of each user's training events; the ranker reads
    # the inferred behaviours only for samples after that point. So no label the ranker trains on ever reaches
    # GBR, and training samples see inferred behaviours exactly as validation and test samples do (inferred
    # before the event, from older behaviour), as a table refreshed offline would be in production.
    as_of_frac: float = Field(0.8, gt=0.0, le=1.0)
    init_from_knowledge: bool = True  # start token embeddings from RER's aligned vectors when the run has them

    @model_validator(mode="after")
    def _slots_fit(self) -> GBRConfig:
        if self.k >= self.max_len:
            raise ValueError(f"k ({self.k}) must be smaller than max_len ({self.max_len}) so some history fits beside the slots")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        return self


class BeyondLogConfig(Strict):
    """The beyond-log protocol: hide target users' off-platform behaviours and ask a generator to infer them.

    An item is off-platform when ANY of its genres is in `off_platform_genres` (MovieLens lists genres
    alphabetically, so "first genre" would be an artefact of spelling, not of the film).
    """

    off_platform_genres: list[str] = Field(default_factory=lambda: ["Horror", "Sci-Fi", "Thriller"], min_length=1)
    target_user_frac: float = Field(0.2, gt=0.0, lt=1.0)  # of all users; the rest are world users
    seed: int = 0  # which users are targets (fixed across model seeds)
    k: int = Field(20, ge=1)  # generated off-platform items per target user, scored as recall@k / ndcg@k
    min_hidden: int = Field(1, ge=1)  # a target user has at least this many off-platform events
    min_history: int = Field(1, ge=1)  # ... and at least this many on-platform events to condition on
