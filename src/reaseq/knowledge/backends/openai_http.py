"""OpenAI-compatible chat completions over HTTP: bounded concurrency, rate limit, retries with backoff."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)

from reaseq.knowledge.backends.base import BackendError, Completion, Message
from reaseq.knowledge.backends.rate_limit import RateLimiter
from reaseq.knowledge.config import OpenAIHTTPConfig

log = logging.getLogger("reaseq")

CHAT_PATH = "chat/completions"
# Worth another try: the server is overloaded, restarting or slow, not refusing the request itself.
RETRYABLE_STATUS = frozenset({408, 425, 429})
SERVER_ERROR_MIN = 500
# Random extra wait, as a fraction of the backoff, so many clients do not retry in lockstep.
JITTER_FRACTION = 0.25
DEFAULT_SCHEMA_NAME = "answer"
ERROR_BODY_CHARS = 300


class _Retryable(Exception):
    """A failure that another attempt may not have (timeout, connection, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass
class _LoopState:
    # httpx clients, semaphores and locks belong to one event loop; a new loop gets new ones.
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    semaphore: asyncio.Semaphore
    limiter: RateLimiter


class OpenAIHTTPBackend:
    """Client of an OpenAI-compatible /chat/completions endpoint."""

    def __init__(self, cfg: OpenAIHTTPConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.cfg = cfg
        self.model_id = cfg.model_id or cfg.model
        self._transport = transport
        self._api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        self._state: _LoopState | None = None
        self.requests_sent = 0  # HTTP attempts, retries included

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            client = httpx.AsyncClient(
                base_url=self.cfg.base_url.rstrip("/") + "/",
                timeout=httpx.Timeout(self.cfg.timeout_s),
                headers=headers,
                transport=self._transport,
            )
            self._state = _LoopState(loop, client, asyncio.Semaphore(self.cfg.max_concurrency), RateLimiter(self.cfg.requests_per_second))
        return self._state

    def request_body(
        self, messages: list[Message], *, json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None, repeat_penalty: float = 1.0
    ) -> dict[str, Any]:
        """The JSON body sent for one call."""
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            **self.cfg.extra_body,
        }
        if seed is not None:
            body["seed"] = seed
        if repeat_penalty != 1.0:
            # Not part of the OpenAI API; vLLM and SGLang call it repetition_penalty, llama-cpp-python repeat_penalty.
            body[self.cfg.repeat_penalty_field] = repeat_penalty
        if json_schema is not None and self.cfg.structured_output == "json_schema":
            name = str(json_schema.get("title", DEFAULT_SCHEMA_NAME))
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema, "strict": True}}
        elif json_schema is not None and self.cfg.structured_output == "json_object_schema":
            body["response_format"] = {"type": "json_object", "schema": json_schema}
        elif json_schema is not None and self.cfg.structured_output == "json_object":
            body["response_format"] = {"type": "json_object"}
        return body

    def _wait_seconds(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.cfg.retry_after_max_s)
        backoff = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** (state.attempt_number - 1))
        return backoff * (1.0 + JITTER_FRACTION * random.random())

    async def complete(
        self, messages: list[Message], *, json_schema: dict[str, Any] | None, max_tokens: int, temperature: float, seed: int | None, repeat_penalty: float = 1.0
    ) -> Completion:
        """One chat completion, retried on timeouts, connection errors, 5xx and 429."""
        body = self.request_body(messages, json_schema=json_schema, max_tokens=max_tokens, temperature=temperature, seed=seed, repeat_penalty=repeat_penalty)
        attempts = self.cfg.max_retries + 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=self._wait_seconds,
            retry=retry_if_exception_type(_Retryable),
            before_sleep=lambda s: log.info("LLM request failed (%s); retry %d of %d", s.outcome.exception() if s.outcome else "?", s.attempt_number, attempts - 1),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post(body)
        except _Retryable as exc:
            raise BackendError(f"{self.cfg.base_url}: gave up after {attempts} attempts: {exc}") from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _post(self, body: dict[str, Any]) -> Completion:
        state = self._loop_state()
        async with state.semaphore:
            await state.limiter.wait()
            self.requests_sent += 1
            start = time.perf_counter()
            try:
                response = await state.client.post(CHAT_PATH, json=body)
            except httpx.TimeoutException:
                raise _Retryable(f"no answer within {self.cfg.timeout_s}s") from None
            except httpx.TransportError as exc:
                raise _Retryable(f"connection failed ({type(exc).__name__}: {exc})") from None
            seconds = time.perf_counter() - start
        status = response.status_code
        if status in RETRYABLE_STATUS or status >= SERVER_ERROR_MIN:
            raise _Retryable(f"HTTP {status}", parse_retry_after(response.headers.get("retry-after")))
        if status >= 400:
            raise BackendError(f"{self.cfg.base_url}: HTTP {status}, request refused: {response.text[:ERROR_BODY_CHARS]}")
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            # A proxy's error page or a half-written body: the server may answer properly next time.
            raise _Retryable(f"the response is not a chat completion: {response.text[:ERROR_BODY_CHARS]!r}") from None
        usage = payload.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            seconds=seconds,
            finish_reason=choice.get("finish_reason"),
        )

    async def aclose(self) -> None:
        """Close the HTTP client of the current event loop."""
        if self._state is not None and self._state.loop is asyncio.get_running_loop():
            await self._state.client.aclose()
        self._state = None
