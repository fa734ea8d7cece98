"""The OpenAI-compatible HTTP backend against a real local server: retries, timeouts, 5xx, 429, limits."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from reaseq.knowledge.backends.base import BackendError
from reaseq.knowledge.backends.openai_http import OpenAIHTTPBackend, parse_retry_after
from tests.knowledge.conftest import http_config
from tests.knowledge.scripted_server import Reply, ScriptedServer

MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
SCHEMA = {"title": "probe_answer", "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}


def call(backend: OpenAIHTTPBackend, schema: dict | None = SCHEMA):
    return asyncio.run(backend.complete(MESSAGES, json_schema=schema, max_tokens=32, temperature=0.0, seed=7))


@pytest.fixture
def plain() -> ScriptedServer:
    srv = ScriptedServer(lambda body: Reply(content='{"a": "ok"}')).start()
    yield srv
    srv.stop()


def test_normal_answer_sends_schema_and_key(plain: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REASEQ_TEST_KEY", "sk-test")
    backend = OpenAIHTTPBackend(http_config(plain, api_key_env="REASEQ_TEST_KEY"))
    out = call(backend)
    assert out.text == '{"a": "ok"}' and out.completion_tokens > 0 and out.prompt_tokens >= 0
    body = plain.requests[0]
    assert body["model"] == "scripted" and body["seed"] == 7 and body["max_tokens"] == 32 and body["temperature"] == 0.0
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "probe_answer", "schema": SCHEMA, "strict": True}}
    assert plain.headers[0]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("mode, expected", [("json_object_schema", {"type": "json_object", "schema": SCHEMA}), ("json_object", {"type": "json_object"}), ("none", None)])
def test_structured_output_can_be_turned_down(plain: ScriptedServer, mode: str, expected: dict | None) -> None:
    call(OpenAIHTTPBackend(http_config(plain, structured_output=mode)))
    assert plain.requests[0].get("response_format") == expected


def test_repeat_penalty_goes_in_the_configured_field(plain: ScriptedServer) -> None:
    backend = OpenAIHTTPBackend(http_config(plain, repeat_penalty_field="repeat_penalty"))
    asyncio.run(backend.complete([{"role": "user", "content": "hi"}], json_schema=None, max_tokens=8, temperature=0.0, seed=0, repeat_penalty=1.2))
    asyncio.run(backend.complete([{"role": "user", "content": "hi"}], json_schema=None, max_tokens=8, temperature=0.0, seed=0))
    assert plain.requests[0]["repeat_penalty"] == 1.2 and "repeat_penalty" not in plain.requests[1]
    asyncio.run(backend.aclose())


def test_500_then_success(plain: ScriptedServer) -> None:
    plain.push(Reply(status=500, raw_body="oops"))
    assert call(OpenAIHTTPBackend(http_config(plain))).text == '{"a": "ok"}'
    assert len(plain.requests) == 2


def test_timeout_then_success(plain: ScriptedServer) -> None:
    plain.push(Reply(content='{"a": "late"}', delay=0.6))
    backend = OpenAIHTTPBackend(http_config(plain, timeout_s=0.2))
    assert call(backend).text == '{"a": "ok"}'
    assert len(plain.requests) == 2 and backend.requests_sent == 2


def test_429_waits_for_retry_after(plain: ScriptedServer) -> None:
    plain.push(Reply(status=429, raw_body="slow down", headers={"Retry-After": "0.4"}))
    start = time.perf_counter()
    call(OpenAIHTTPBackend(http_config(plain)))  # backoff alone would wait ~0.01 s
    assert time.perf_counter() - start >= 0.4
    assert len(plain.requests) == 2


def test_broken_envelope_then_success(plain: ScriptedServer) -> None:
    plain.push(Reply(raw_body="<html>bad gateway</html>"))
    assert call(OpenAIHTTPBackend(http_config(plain))).text == '{"a": "ok"}'


def test_gives_up_after_max_retries(plain: ScriptedServer) -> None:
    plain.push(*[Reply(status=503, raw_body="down")] * 5)
    with pytest.raises(BackendError, match="3 attempts.*HTTP 503"):
        call(OpenAIHTTPBackend(http_config(plain, max_retries=2)))
    assert len(plain.requests) == 3


def test_client_errors_are_not_retried(plain: ScriptedServer) -> None:
    plain.push(Reply(status=400, raw_body=json.dumps({"error": "bad schema"})))
    with pytest.raises(BackendError, match="HTTP 400.*bad schema"):
        call(OpenAIHTTPBackend(http_config(plain)))
    assert len(plain.requests) == 1


def test_empty_content_is_returned_not_invented(plain: ScriptedServer) -> None:
    plain.push(Reply(content=None))
    assert call(OpenAIHTTPBackend(http_config(plain))).text == ""


def test_concurrency_is_bounded() -> None:
    srv = ScriptedServer(lambda body: Reply(content="{}", delay=0.15)).start()
    try:
        backend = OpenAIHTTPBackend(http_config(srv, max_concurrency=2))

        async def many() -> None:
            await asyncio.gather(*(backend.complete(MESSAGES, json_schema=None, max_tokens=8, temperature=0.0, seed=None) for _ in range(6)))
            await backend.aclose()

        asyncio.run(many())
        assert len(srv.requests) == 6 and srv.max_in_flight == 2
    finally:
        srv.stop()


def test_rate_limit_spaces_requests(plain: ScriptedServer) -> None:
    backend = OpenAIHTTPBackend(http_config(plain, requests_per_second=10))

    async def four() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(backend.complete(MESSAGES, json_schema=None, max_tokens=8, temperature=0.0, seed=None) for _ in range(4)))
        return time.perf_counter() - start

    assert asyncio.run(four()) >= 0.3  # starts at 0, 0.1, 0.2, 0.3 s


def test_backend_survives_a_new_event_loop(plain: ScriptedServer) -> None:
    backend = OpenAIHTTPBackend(http_config(plain))
    call(backend)
    call(backend)  # a second asyncio.run: the client of the first loop must not be reused
    assert len(plain.requests) == 2


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(later) <= 31
