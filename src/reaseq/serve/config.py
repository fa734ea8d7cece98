"""Settings of the scoring server (`reaseq serve`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from reaseq.strict import Strict


class ServeConfig(Strict):
    """Where the server listens, what it loads and how large a request may be."""

    host: str = "127.0.0.1"  # loopback by default: exposing the server is an explicit choice
    port: int = Field(8000, ge=0, le=65535)  # 0 lets the OS pick a free port
    seed: int | None = None  # which train/seed<N>/model.pt to serve; None = the run's first seed
    max_candidates: int = Field(1000, ge=1)  # items scored in one request
    max_history: int = Field(200, ge=0)  # fresh history events a request may carry (the model still reads its max_len most recent)
    max_id_chars: int = Field(256, ge=1)  # longest raw user / item id accepted
    max_body_bytes: int = Field(1 << 20, ge=1)  # larger request bodies get 413 before they are parsed
    num_threads: int = Field(1, ge=1)  # torch intra-op threads per forward pass (1 was fastest up to 1,000 candidates, see docs/serving.md)
    # Encode the user's history once per request, not once per candidate (serve/one_user.py; checked against the
    # ranker's own forward at load, which serves whenever this does not apply). False = the ranker's forward.
    one_user_forward: bool = True
    scoring_threads: int = Field(2, ge=1)  # forward passes running at once per worker (about cores / num_threads); more requests wait in line
    # One worker is one process with its own copy of the model and tables. More workers scale across cores,
    # but /admin/reload only refreshes the worker that answers it: with workers > 1 restart to refresh, or
    # run one worker per container behind a load balancer and reload each.
    workers: int = Field(1, ge=1)
    timeout_graceful_shutdown_s: float = Field(10.0, ge=0)  # in-flight requests may finish this long after SIGTERM
    admin_token_env: str = "REASEQ_SERVE_ADMIN_TOKEN"  # when this environment variable is set, /admin/* needs `Authorization: Bearer <it>`
    log_level: str = "info"
    http: Literal["auto", "h11", "httptools"] = "auto"  # uvicorn's HTTP parser; auto = httptools (C) when installed, else h11
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"  # uvicorn's event loop; auto = uvloop when installed, else asyncio
    access_log: bool = False  # one log line per request costs throughput; enable when debugging
