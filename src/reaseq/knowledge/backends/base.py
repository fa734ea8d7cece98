"""The one small interface every LLM runtime implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from reaseq.errors import ReaSeqError

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": ...}


@dataclass(frozen=True)
class Completion:
    """One model answer with its cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None


class BackendError(ReaSeqError):
    """A call that failed for good (retries exhausted, or a request the server refuses)."""


class BackendUnavailable(ReaSeqError):
    """A backend that cannot start here (missing optional package, missing model file)."""


@runtime_checkable
class LLMBackend(Protocol):
    """Chat completion with optional JSON-schema-constrained output."""

    model_id: str  # identity of the model in cache keys and records

    async def complete(
        self,
        messages: list[Message],
        *,
        json_schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        repeat_penalty: float = 1.0,
    ) -> Completion:
        """Answer the conversation; raise BackendError when it cannot (repeat_penalty 1.0 = none)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads or model memory."""
        ...
