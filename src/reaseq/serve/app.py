"""The HTTP scoring service: FastAPI app factory, request limits, atomic table reload, uvicorn runner."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import torch
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    create_model,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reaseq import __version__
from reaseq.errors import InputError
from reaseq.io import json_safe
from reaseq.serve.config import ServeConfig
from reaseq.serve.loader import DATA_DIR, inferred_inputs, load_ranker
from reaseq.serve.scorer import Scorer, UnknownIdsError
from reaseq.serve.tables import RefreshError, TableStore, build_tables, tables_from_data

log = logging.getLogger("reaseq")

RUN_DIR_ENV = "REASEQ_SERVE_RUN_DIR"  # how `serve` hands its arguments to worker processes (workers > 1)
CONFIG_ENV = "REASEQ_SERVE_CONFIG"


class ServingState:
    """The loaded ranker and a store of scorers, one per version of the serving tables."""

    def __init__(self, run_dir: Path, cfg: ServeConfig) -> None:
        self.run_dir = Path(run_dir)
        model, run_cfg, data = load_ranker(self.run_dir, cfg.seed)
        self.model = model
        self.max_len = run_cfg.protocol.ctr.max_len  # the history length the ranker was trained on
        self.name = f"{run_cfg.model.name}@seed{cfg.seed if cfg.seed is not None else run_cfg.train.seeds[0]}"
        self.user_inputs = inferred_inputs(run_cfg)  # GBR's inferred behaviours, for a ranker that reads them
        tables = tables_from_data(data, self.run_dir / DATA_DIR, self.max_len, self.user_inputs(data) if self.user_inputs else None)
        self.catalogue = tables.catalogue
        self.one_user = cfg.one_user_forward
        self.store: TableStore[Scorer] = TableStore(self._build, initial=Scorer(model, tables, self.name, self.one_user))

    def _build(self) -> Scorer:
        tables = build_tables(self.run_dir, self.max_len, self.user_inputs)
        if tables.catalogue != self.catalogue:
            raise InputError(
                self.run_dir / DATA_DIR / "items.parquet", "item_id",
                "the item catalogue or feature vocabularies changed since the ranker was loaded (a reload only refreshes users and histories)",
                "retrain with `reaseq train --force`, then restart the server",
            )
        return Scorer(self.model, tables, self.name, self.one_user)


class ScoreResponse(BaseModel):
    """Click probabilities in candidate order, with what produced them."""

    scores: list[float]
    model: str
    tables_version: str


def score_request_model(cfg: ServeConfig) -> type[BaseModel]:
    """The /score request body with this server's limits (they also appear in the OpenAPI schema)."""
    text_id = Annotated[StrictStr, StringConstraints(min_length=1, max_length=cfg.max_id_chars)]
    raw_id = StrictInt | text_id  # strict: 1.5, true or null are errors, not silently coerced ids
    return create_model(
        "ScoreRequest",
        __config__=ConfigDict(extra="forbid"),
        __doc__="A user, the items to score and optionally events newer than the server's tables.",
        user_id=(raw_id, Field(description="Raw user id as in the dataset; unknown users are scored as cold users.")),
        candidates=(list[raw_id], Field(min_length=1, max_length=cfg.max_candidates, description="Raw item ids to score.")),
        history=(list[raw_id], Field(default_factory=list, max_length=cfg.max_history, description="Fresh events (raw item ids), most recent last.")),
        history_actions=(list[text_id] | None, Field(None, max_length=cfg.max_history, description="Optional action label per fresh event, e.g. a rating '4' or 'buy'.")),
    )


class BodySizeLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before any parsing (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        # Buffer the body (bounded by max_bytes) so that chunked uploads without a length are capped too.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        await response(scope, receive, send)


def _unprocessable(field: str, message: str, kind: str, ids: list[Any] | None = None) -> JSONResponse:
    """A 422 in FastAPI's own validation-error shape, so clients parse every 422 alike."""
    error: dict[str, Any] = {"loc": ["body", field], "msg": message, "type": kind}
    if ids is not None:
        error["ids"] = ids
    return JSONResponse({"detail": [error]}, status_code=422)


def create_app(run_dir: Path, cfg: ServeConfig, state: ServingState | None = None) -> FastAPI:
    """The scoring app for one run folder; the ranker and tables load at startup unless `state` is given."""
    holder: dict[str, Any] = {} if state is None else {"state": state}  # "state" and "limiter", set up by the lifespan
    admin_token = os.environ.get(cfg.admin_token_env)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(cfg.num_threads)
        holder["limiter"] = anyio.CapacityLimiter(cfg.scoring_threads)
        if "state" not in holder:
            holder["state"] = await anyio.to_thread.run_sync(ServingState, Path(run_dir), cfg)
        current = holder["state"].store.current
        log.info("serving %s from %s (tables %s)", holder["state"].name, run_dir, current.tables.version if current else "-")
        yield
        # Graceful shutdown: uvicorn has stopped accepting and drained requests; release the model and tables.
        holder["state"].store.clear()
        holder.clear()

    app = FastAPI(title="ReaSeq scoring", version=__version__, lifespan=lifespan, description="Click probabilities of candidate items for a user, from a trained ReaSeq ranker.")
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    ScoreRequest = score_request_model(cfg)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes the offending input; a NaN or Infinity there would make its own answer fail with 500.
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    def current_scorer() -> Scorer:
        scorer = holder["state"].store.current if "state" in holder else None
        if scorer is None:
            raise HTTPException(status_code=503, detail="the model and tables are not loaded yet")
        return scorer

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is alive (says nothing about the model)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """200 once the ranker and tables are loaded, else 503."""
        scorer = holder["state"].store.current if "state" in holder else None
        if scorer is None:
            return JSONResponse({"ready": False}, status_code=503)
        store = holder["state"].store
        return JSONResponse({
            "ready": True, "model": scorer.name, "tables_version": scorer.tables.version,
            "users": scorer.tables.n_users, "items": len(scorer.tables.item_index), "last_reload_error": store.last_error,
        })

    def score_now(scorer: Scorer, request: Any) -> JSONResponse:
        started = time.perf_counter()
        try:
            scores = scorer.score(request.user_id, request.candidates, request.history, request.history_actions)
        except UnknownIdsError as exc:
            return _unprocessable(exc.field or "candidates", str(exc), "unknown_id", exc.ids)
        except InputError as exc:
            return _unprocessable(exc.field or "body", str(exc), "invalid")
        # Server-Timing lets clients and benchmarks tell model time from network and parsing time.
        timing = {"server-timing": f"score;dur={(time.perf_counter() - started) * 1000:.3f}"}
        return JSONResponse({"scores": scores, "model": scorer.name, "tables_version": scorer.tables.version}, headers=timing)

    async def score(request: Any) -> JSONResponse:
        """Click probabilities of the candidates for the user, in candidate order."""
        scorer = current_scorer()  # this request keeps this table version even if a reload swaps it meanwhile
        # Forward passes run in worker threads (torch releases the GIL) but at most `scoring_threads` at once:
        # extra requests wait as cheap coroutines instead of piling up threads and activation memory.
        return await anyio.to_thread.run_sync(score_now, scorer, request, limiter=holder["limiter"])

    # The request model is built at runtime (its limits come from cfg), so the annotation is set here:
    # with postponed annotations FastAPI could not resolve a name local to this function.
    score.__annotations__["request"] = ScoreRequest
    app.post("/score", response_model=ScoreResponse, responses={422: {"description": "invalid request, or unknown item ids (listed in `ids`)"}, 413: {"description": "body too large"}, 503: {"description": "not loaded yet"}})(score)

    @app.post("/admin/reload", responses={409: {"description": "the reload failed; the previous tables keep serving"}})
    def reload(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """Rebuild the serving tables from the run folder and swap them in atomically."""
        # Compared as bytes: compare_digest refuses non-ASCII text, and a header is whatever the client sends.
        if admin_token is not None and not hmac.compare_digest((authorization or "").encode(), f"Bearer {admin_token}".encode()):
            raise HTTPException(status_code=401, detail=f"send `Authorization: Bearer <token>` with the token in ${cfg.admin_token_env}")
        previous = current_scorer()
        try:
            fresh = holder["state"].store.refresh()
        except RefreshError as exc:
            return JSONResponse({"detail": f"reload failed, still serving tables {previous.tables.version}: {exc}", "tables_version": previous.tables.version}, status_code=409)
        return JSONResponse({"tables_version": fresh.tables.version, "previous_version": previous.tables.version, "changed": fresh.tables.version != previous.tables.version})

    return app


def app_from_env() -> FastAPI:
    """App factory for uvicorn worker processes: the run folder and config come from the environment."""
    return create_app(Path(os.environ[RUN_DIR_ENV]), ServeConfig.model_validate_json(os.environ[CONFIG_ENV]))


def serve(run_dir: Path, cfg: ServeConfig) -> None:
    """Run the scoring server until SIGINT/SIGTERM (in-flight requests finish first)."""
    import uvicorn

    options: dict[str, Any] = {
        "host": cfg.host, "port": cfg.port, "log_level": cfg.log_level, "access_log": cfg.access_log,
        "timeout_graceful_shutdown": cfg.timeout_graceful_shutdown_s, "http": cfg.http, "loop": cfg.loop,
    }
    if cfg.workers > 1:
        os.environ[RUN_DIR_ENV] = str(Path(run_dir).resolve())
        os.environ[CONFIG_ENV] = cfg.model_dump_json()
        uvicorn.run("reaseq.serve.app:app_from_env", factory=True, workers=cfg.workers, **options)
        return
    # Loading before uvicorn starts turns a bad run folder into one clear error instead of a startup traceback.
    torch.set_num_threads(cfg.num_threads)
    state = ServingState(Path(run_dir), cfg)
    uvicorn.run(create_app(run_dir, cfg, state=state), **options)
