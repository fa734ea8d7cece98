"""Typed configuration: YAML files under configs/ parsed into pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from reaseq.errors import ConfigError
from reaseq.gbr.config import GBRConfig
from reaseq.knowledge.config import KnowledgeConfig
from reaseq.represent.config import RepresentConfig
from reaseq.strict import Strict

__all__ = ["Strict", "RunConfig", "load_config", "dump_config"]


class DatasetConfig(Strict):
    """Where a dataset comes from and how its columns map to the canonical tables."""

    name: str = "ml-100k"
    loader: Literal["embedded", "recbole_atomic", "movielens_raw", "amazon2023", "taobao", "tabular"] = "embedded"
    path: Path | None = None  # file or folder; not needed for `embedded`
    interactions: str | None = None  # file names inside `path` (tabular/amazon loaders)
    items: str | None = None
    users: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)  # canonical name -> source column (tabular loader)
    timestamp_format: str | None = None  # strptime format when timestamps are text
    duplicates: Literal["error", "drop"] = "error"  # exact duplicate interaction rows
    min_user_interactions: int = 0  # k-core style filters; 0 keeps everyone
    min_item_interactions: int = 0
    max_rows: int | None = None  # read only the first N interactions (large sets such as Taobao)


class CTRProtocolConfig(Strict):
    """The `ctr` protocol: every interaction with enough history is a labelled sample."""

    min_hist: int = 1  # an interaction is a sample when the user has at least this many earlier ones
    max_len: int = 50  # history length fed to the ranker (most recent items)
    label_threshold: float = 4.0  # explicit ratings >= threshold are positive
    valid_frac: float = 0.1  # per user, the last test_frac of samples are test, the valid_frac before valid
    test_frac: float = 0.1
    min_samples_for_split: int = 3  # users with fewer samples keep them all in train
    negatives_per_positive: int = 1  # implicit data only: sampled non-clicked items per event


class TopKProtocolConfig(Strict):
    """The `topk` protocol: leave-one-out by time, full-catalogue ranking."""

    max_len: int = 50
    min_rating: float | None = None  # keep only interactions rated at least this (None keeps all)
    min_user_interactions: int = Field(3, ge=3)  # users need a train, a valid and a test event
    ks: list[int] = Field(default_factory=lambda: [10, 20])
    exclude_seen: bool = False  # mask the user's earlier items when ranking (RecBole's sequential models do not)


class ProtocolConfig(Strict):
    """Both protocols; a run picks one with `protocol.name`."""

    name: Literal["ctr", "topk"] = "ctr"
    ctr: CTRProtocolConfig = Field(default_factory=CTRProtocolConfig)
    topk: TopKProtocolConfig = Field(default_factory=TopKProtocolConfig)


class ModelConfig(Strict):
    """Ranker architecture. Fields a model does not use are ignored by it."""

    name: Literal["popularity", "din", "sasrec"] = "din"
    embedding_dim: int = 32
    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])
    mlp_hidden: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = 0.1
    attention_softmax: bool = True  # DIN: normalise attention weights over the history
    use_history_ratings: bool = True  # DIN: the history's ratings/actions as a feature
    item_fusion: Literal["sum", "concat"] = "sum"  # how item representation parts combine
    use_item_features: bool = True  # DIN: genres and year of history and target items
    use_user_features: bool = True  # DIN: user attributes (age, gender, occupation...)
    num_layers: int = 2  # SASRec
    num_heads: int = 2  # SASRec
    # RER parts of the item representation (DIN); any of them needs the embed step's tables.
    # "aligned": gate * ID + (1 - gate) * aligned knowledge, gate = the tables' popularity gate;
    # "text": raw text vectors through a linear layer, added (baseline); "kar": raw text vectors through a
    # mixture-of-experts adaptor, added (KAR-style baseline).
    knowledge: Literal["none", "text", "aligned", "kar"] = "none"
    semantic_ids: bool = False  # DIN: one embedding table per semantic-ID level, added to the item representation
    semantic_id_pooling: Literal["sum", "mean"] = "sum"  # how the levels' embeddings combine
    semantic_id_dedup_level: bool = False  # also embed the dedup level (an index inside a collision group, not semantic)
    kar_experts: int = Field(4, ge=1)  # KAR adaptor: number of expert MLPs
    kar_hidden: int = Field(64, ge=1)  # KAR adaptor: hidden width of each expert
    fine_tune_projection: bool = False  # "aligned": train the text -> collaborative projection with the ranker
    # "aligned": in training, the share of a batch's distinct items (those with knowledge) whose gate is set to 0, so the
    # ranker also learns to score knowledge-only items, which is all a cold item is (ID dropout, as in DropoutNet)
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # "aligned": also add the raw text vectors through a trainable linear map (as `din_text` does), outside the gate,
    # so an item's text informs its vector end to end, a cold item's too
    text_residual: bool = False
    # "aligned": weight of an extra training loss that pulls each item's knowledge vector towards its ID embedding
    # (held fixed in that loss; relative squared error weighted by the popularity gate), so that a cold item's
    # knowledge-only vector lands where the ranker's ID embeddings live instead of at a scale it never saw
    id_regression: float = Field(0.0, ge=0.0)
    knowledge_tables: Path | None = None  # the embed step's tables (knowledge.npz); the pipeline sets it
    # GBR in the ranker (DIN): a second target attention over the user's inferred behaviours, beside the real
    # sequence; each inferred item carries a source flag and its confidence. Needs the gbr step's table.
    inferred: bool = False
    # with `inferred`: keep the second target attention (off leaves only the target's own inferred features below)
    inferred_attention: bool = True
    # with `inferred`: add a 0/1 feature "the target is among the user's inferred items". The target's confidence
    # alone is on the scale of 1/catalogue (about 0.03 on ML-1M), too small for the MLP to pick up quickly.
    inferred_target_indicator: bool = False
    inferred_table: Path | None = None  # the gbr step's table (inferred.parquet); the pipeline sets it


class TrainConfig(Strict):
    """Optimisation and model selection (validation only)."""

    epochs: int = 20
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.0
    embedding_l2: float = 0.0
    patience: int = 2  # epochs without validation improvement before stopping
    seeds: list[int] = Field(default_factory=lambda: [2024])
    num_threads: int | None = None  # torch threads; None = all cores
    time_budget_s: float | None = None  # stop after the epoch that crosses this budget
    progress: bool = True
    device: str = "cpu"  # "cuda" trains and scores on a GPU; batches are built on CPU either way


class EvaluateConfig(Strict):
    """What the evaluator reports besides the headline metrics."""

    history_buckets: list[int] = Field(default_factory=lambda: [5, 20, 50, 100, 200])  # user-history-length edges
    popularity_buckets: list[int] = Field(default_factory=lambda: [20, 100, 500, 1000])  # item train-count edges


class RunConfig(Strict):
    """Everything one run needs; written resolved next to its artifacts."""

    run_dir: Path = Path("runs/default")
    data_cache: Path = Path(".cache/reaseq")
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    knowledge: KnowledgeConfig = Field(default_factory=KnowledgeConfig)
    represent: RepresentConfig = Field(default_factory=RepresentConfig)
    gbr: GBRConfig = Field(default_factory=GBRConfig)

    @model_validator(mode="after")
    def _model_fits_protocol(self) -> RunConfig:
        allowed = PROTOCOL_MODELS[self.protocol.name]
        if self.model.name not in allowed:
            raise ValueError(f"model '{self.model.name}' does not run on the {self.protocol.name} protocol; use one of {allowed}")
        return self


# Which rankers each protocol can train (later issues add their variants here).
PROTOCOL_MODELS: dict[str, list[str]] = {"ctr": ["popularity", "din"], "topk": ["popularity", "sasrec"]}


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(None, dotted, f"'{key}' is not a section", "override a leaf key such as train.lr=0.001")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ['train.lr=0.01', 'model.name=din'] into a nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(None, item, "an override must look like key.sub=value", "write e.g. --set train.epochs=5")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _describe(error: ValidationError, file: str) -> ConfigError:
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"])
    if not first["loc"]:  # a cross-field check such as model/protocol compatibility
        return ConfigError(file, "model.name", first["msg"].removeprefix("Value error, "), "set model.name to a model of that protocol, or change protocol.name")
    if first["type"] == "extra_forbidden":
        return ConfigError(file, field, f"unknown config key '{field}'", "remove it or fix its spelling; `reaseq config-schema` lists every key")
    return ConfigError(file, field, first["msg"], f"give '{field}' a valid value (got {first.get('input')!r})")


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults), apply dotted overrides, validate strictly."""
    data: dict[str, Any] = {}
    file = str(path) if path else "<defaults>"
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(path, None, "config file not found", "pass an existing YAML file, e.g. configs/ml-100k.yaml")
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(path, None, f"not valid YAML ({exc})", "fix the YAML syntax") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(path, None, "the top level must be a mapping", "write sections such as `dataset:` and `train:`")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc, file) from None


def with_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """A resolved config with dotted overrides applied on top, validated strictly."""
    data = _merge(config.model_dump(mode="json"), parse_overrides(overrides))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc, "<overrides>") from None


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
