"""LLM runtimes behind one interface; make_backend picks one from the config."""

from __future__ import annotations

from reaseq.knowledge.backends.base import (
    BackendError,
    BackendUnavailable,
    Completion,
    LLMBackend,
    Message,
)
from reaseq.knowledge.config import BackendConfig

__all__ = ["BackendError", "BackendUnavailable", "Completion", "LLMBackend", "Message", "make_backend"]


def make_backend(cfg: BackendConfig) -> LLMBackend:
    """Build the configured backend (optional runtimes are imported only when chosen)."""
    if cfg.kind == "openai_http":
        from reaseq.knowledge.backends.openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(cfg.openai_http)
    if cfg.kind == "llama_cpp":
        from reaseq.knowledge.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(cfg.llama_cpp)
    from reaseq.knowledge.backends.transformers_backend import TransformersBackend

    return TransformersBackend(cfg.transformers)
