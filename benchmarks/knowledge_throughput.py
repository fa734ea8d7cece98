"""Knowledge pipeline throughput against the raw backend (same model, same machine, one run), and a cached rerun.

For each backend the agents run over --items ML-1M movies with no cache while every request they send is recorded;
then the same requests are sent straight to the backend, one after the other. Generated tokens per second of
wall time for both give `overhead` = 1 - pipeline/raw (what the agents, parsing, validation and bookkeeping cost).
The two passes alternate in blocks of --block items so that machine load hits both alike.
Backends: in-process llama.cpp, and llama.cpp's own OpenAI-compatible server (python -m llama_cpp.server) on
127.0.0.1 driven through our HTTP client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, free_port, open_run  # noqa: E402

from reaseq.io import write_json  # noqa: E402
from reaseq.knowledge.agents import generate_knowledge  # noqa: E402
from reaseq.knowledge.backends.base import Completion, LLMBackend, Message  # noqa: E402
from reaseq.knowledge.backends.llama_cpp import LlamaCppBackend, find_embedded_gguf  # noqa: E402
from reaseq.knowledge.backends.openai_http import OpenAIHTTPBackend  # noqa: E402
from reaseq.knowledge.cache import KnowledgeCache  # noqa: E402
from reaseq.knowledge.config import LlamaCppConfig, OpenAIHTTPConfig  # noqa: E402
from reaseq.knowledge.item_text import items_from_table  # noqa: E402

METRICS = ["tokens_per_s", "raw_tokens_per_s", "overhead", "cached_rerun_s"]


@dataclass
class Recorder:
    """Wraps a backend and keeps every request it is sent (to replay raw) and the tokens it returns."""

    inner: LLMBackend
    requests: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    async def complete(self, messages: list[Message], **kwargs: Any) -> Completion:
        self.requests.append({"messages": messages, **kwargs})
        out = await self.inner.complete(messages, **kwargs)
        self.tokens += out.completion_tokens
        return out

    async def aclose(self) -> None:
        """The inner backend stays open for the raw pass."""


async def _raw(backend: LLMBackend, requests: list[dict[str, Any]]) -> int:
    tokens = 0
    for request in requests:
        tokens += (await backend.complete(request["messages"], **{k: v for k, v in request.items() if k != "messages"})).completion_tokens
    return tokens


def measure(backend: LLMBackend, items: list, knowledge: Any, block: int) -> dict[str, float]:
    """Alternate pipeline and raw passes block by block; tokens/s of each and the overhead."""
    pipe_tokens = pipe_s = raw_tokens = raw_s = 0.0
    for start in range(0, len(items), block):
        chunk = items[start : start + block]
        recorder = Recorder(backend)
        t = time.perf_counter()
        generate_knowledge(chunk, recorder, knowledge.agents, knowledge.decoding, cache=None)
        pipe_s += time.perf_counter() - t
        pipe_tokens += recorder.tokens
        t = time.perf_counter()
        raw_tokens += asyncio.run(_raw(backend, recorder.requests))
        raw_s += time.perf_counter() - t
        print(f"  {start + len(chunk)}/{len(items)} items: pipeline {pipe_tokens / pipe_s:.1f} tok/s, raw {raw_tokens / raw_s:.1f} tok/s", file=sys.stderr)
    pipeline_tps, raw_tps = pipe_tokens / pipe_s, raw_tokens / raw_s
    return {"tokens_per_s": pipeline_tps, "raw_tokens_per_s": raw_tps, "overhead": 1.0 - pipeline_tps / raw_tps, "tokens": pipe_tokens, "raw_tokens": raw_tokens}


def cached_rerun(items: list, knowledge: Any, cache_dir: Path, backend: LLMBackend) -> float:
    """Seconds to rerun the agents over `items` from a filled cache (no model call)."""
    t = time.perf_counter()
    generate_knowledge(items, backend, knowledge.agents, knowledge.decoding, KnowledgeCache(cache_dir))
    return time.perf_counter() - t


def start_server(model: Path, threads: int, n_ctx: int) -> tuple[subprocess.Popen, str]:
    """llama.cpp's OpenAI-compatible server on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads), "--n_ctx", str(n_ctx), "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama_cpp.server did not become ready in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml-1m-ctr.yaml")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--block", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backends", nargs="*", default=["llama_cpp", "openai_http"], choices=["llama_cpp", "openai_http"])
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "runs" / "bench" / "knowledge" / "cache", help="a filled cache (knowledge_quality.py) for the cached rerun")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / "knowledge")
    parser.add_argument("--out", type=Path, default=RESULTS / "knowledge_throughput.json")
    parser.add_argument("--force", action="store_true", help="recompute rows saved in --work-dir")
    args = parser.parse_args()

    run = open_run(args.config, [], args.work_dir / "run")
    knowledge = run.config.knowledge
    knowledge.agents.progress = False
    catalogue = items_from_table(pl.read_parquet(run.root / "data" / "items.parquet"), knowledge.agents)
    # Items outside the quality set (which is first in sha256 order), so neither pass is a cache replay.
    items = catalogue[: args.items]
    llama_cfg = knowledge.backend.llama_cpp.model_copy(update={"n_threads": args.threads})
    rows = []
    local = LlamaCppBackend(llama_cfg)
    # A rerun of the whole catalogue from the cache: answers present are replayed, the rest fail fast (replay only).
    replay = KnowledgeCache(args.cache_dir, replay_only=True)
    t = time.perf_counter()
    generate_knowledge(catalogue, local, knowledge.agents, knowledge.decoding, replay)
    rerun_s = time.perf_counter() - t
    print(f"cached rerun of {len(catalogue)} items: {rerun_s:.1f}s ({replay.hits} cache hits)", file=sys.stderr)
    for kind in args.backends:
        row_file = args.work_dir / "throughput_rows" / f"{kind}.json"
        if row_file.exists() and not args.force:
            rows.append(json.loads(row_file.read_text(encoding="utf-8")))
            continue
        if kind == "llama_cpp":
            backend: LLMBackend = local
            result = measure(backend, items, knowledge, args.block)
        else:
            model = llama_cfg.model_path or find_embedded_gguf(llama_cfg.embedded_package, llama_cfg.assemble_dir)
            proc, url = start_server(Path(model), args.threads, llama_cfg.n_ctx)
            try:
                backend = OpenAIHTTPBackend(OpenAIHTTPConfig(
                        base_url=url,
                        model="local",
                        model_id=local.model_id,
                        api_key_env=None,
                        max_concurrency=1,
                        timeout_s=600,
                        structured_output="json_object_schema",  # how llama-cpp-python's server takes a JSON schema
                        repeat_penalty_field="repeat_penalty",
                    ))
                result = measure(backend, items, knowledge, args.block)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        rows.append({"name": kind, "metrics": {**result, "cached_rerun_s": rerun_s, "cached_rerun_items": float(len(catalogue)), "cache_hits": float(replay.hits)}, "model_id": local.model_id})
        write_json(row_file, rows[-1])  # an interrupted benchmark keeps finished rows
    protocol = (
        f"{len(items)} ML-1M movies, agents of {args.config.name}, {args.threads} llama.cpp thread(s); pipeline and raw passes "
        f"alternate every {args.block} items; tokens_per_s = generated tokens / wall seconds; overhead = 1 - pipeline/raw. "
        f"cached_rerun_s: the agents over all {len(catalogue)} items from the cache in replay-only mode."
    )
    finish("knowledge_throughput", run.config, protocol, [knowledge.decoding.seed or 0], rows, METRICS, args.out)


if __name__ == "__main__":
    main()
