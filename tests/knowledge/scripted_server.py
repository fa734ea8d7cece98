"""A real HTTP server on 127.0.0.1 that answers /v1/chat/completions from a script, for backend and agent tests."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server does for one request."""

    content: str | None = "{}"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (longer than the client's timeout = a timeout)
    raw_body: str | None = None  # sent verbatim instead of a chat completion (a broken envelope)


SHUTDOWN_POLL_S = 0.02
Responder = Callable[[dict[str, Any]], Reply]


def completion_body(content: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style chat completion around `content`, with rough token counts."""
    prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": body.get("model", "scripted"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content or "") // 4, "total_tokens": 0},
    }


class ScriptedServer:
    """Serves scripted replies first, then whatever the responder says; records every request."""

    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda body: Reply())
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        # A short poll interval makes shutdown() return quickly (the default waits up to 0.5 s).
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible API."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order."""
        self.script.extend(replies)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            scripted = self.script.popleft() if self.script else None
        return scripted or self.responder(body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.headers.append(dict(self.headers))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": "not found"}), {})
                    return
                reply = server._next(body)
                try:
                    if reply.delay:
                        time.sleep(reply.delay)
                    payload = reply.raw_body if reply.raw_body is not None else json.dumps(completion_body(reply.content, body))
                    self._send(reply.status, payload, reply.headers)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _send(self, status: int, payload: str, headers: dict[str, str]) -> None:
                data = payload.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler


# --- a responder that plays the four agents ---------------------------------------------------------

PLANNED_DIMENSIONS = [
    {"name": "genre", "description": "main genre and sub-genres", "type": "list"},
    {"name": "mood", "description": "the feeling it leaves", "type": "text"},
    {"name": "audience", "description": "who it suits", "type": "text"},
]
_TITLE = re.compile(r"<item_metadata>.*?^title: (.*?)$", re.DOTALL | re.MULTILINE)


def agent_of(body: dict[str, Any]) -> str:
    """Which agent sent the request (from the response_format schema name)."""
    name = body.get("response_format", {}).get("json_schema", {}).get("name", "")
    return name.removesuffix("_answer")


def title_of(body: dict[str, Any]) -> str:
    """The item title inside the delimited metadata of the first user message."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    match = _TITLE.search(user)
    return match.group(1).strip() if match else "?"


def is_revision(body: dict[str, Any]) -> bool:
    """An analyst request that carries the critic's feedback."""
    return any(m["role"] == "assistant" for m in body["messages"]) and "reviewer checked" in body["messages"][-1]["content"]


@dataclass
class AgentPlayer:
    """Valid, item-dependent answers for every agent; knobs make the critic ask for revisions or an agent misbehave."""

    critic_wants_revision: bool = False
    misbehave: dict[str, list[str | None]] = field(default_factory=dict)  # agent -> contents to send first, in order
    calls: dict[str, int] = field(default_factory=dict)

    def fields(self, body: dict[str, Any], suffix: str = "") -> dict[str, Any]:
        schema = body["response_format"]["json_schema"]["schema"]["properties"]["fields"]["properties"]
        title = title_of(body)
        return {name: ([f"{name} of {title}{suffix}"] if spec["type"] == "array" else f"{name} of {title}{suffix}") for name, spec in schema.items()}

    def __call__(self, body: dict[str, Any]) -> Reply:
        agent = agent_of(body)
        n = self.calls.get(agent, 0)
        self.calls[agent] = n + 1
        queued = self.misbehave.get(agent, [])
        if n < len(queued):
            return Reply(content=queued[n])
        if agent == "planner":
            answer: dict[str, Any] = {"reasoning": "movies differ by genre, mood and audience", "dimensions": PLANNED_DIMENSIONS}
        elif agent == "analyst":
            revised = is_revision(body)
            answer = {"reasoning": f"thinking about {title_of(body)}", "fields": self.fields(body, " (revised)" if revised else "")}
        elif agent == "critic":
            draft = body["messages"][-1]["content"]
            wants = self.critic_wants_revision and "(revised)" not in draft
            answer = {"reasoning": "checked", "issues": ["mood is unsupported"] if wants else [], "confidence": 0.5 if wants else 0.9, "needs_revision": wants}
        elif agent == "writer":
            answer = {"fields": self.fields(body)}
        else:
            return Reply(status=400, content=None, raw_body=json.dumps({"error": f"unknown schema {agent!r}"}))
        return Reply(content=json.dumps(answer))
