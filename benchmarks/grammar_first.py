"""Grammar-first greedy sampling against llama-cpp-python's own sampler chain (same model, same requests, one run).

The agents run once over --items movies (no cache) and every request they send is recorded. The requests are then
sent again to two in-process llama.cpp backends that differ only in `grammar_first`, alternating in blocks of
--block requests so machine load hits both alike. Reported per sampler: generated tokens per second of call time
(prompt evaluation included, as in a real run), and for the pair: the speed-up and how many answers are identical
(greedy decoding should make them all identical).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, open_run  # noqa: E402
from knowledge_throughput import Recorder  # noqa: E402

from reaseq.knowledge.agents import generate_knowledge  # noqa: E402
from reaseq.knowledge.backends.grammar_first import GrammarFirstGreedy  # noqa: E402
from reaseq.knowledge.backends.llama_cpp import LlamaCppBackend  # noqa: E402
from reaseq.knowledge.item_text import items_from_table  # noqa: E402

METRICS = ["tokens_per_s", "speedup", "identical_answers", "full_mask_rate"]


async def _replay(backend: LlamaCppBackend, requests: list[dict[str, Any]]) -> tuple[list[str], int, float, int, int]:
    texts, tokens, seconds, steps, masks = [], 0, 0.0, 0, 0
    for request in requests:
        out = await backend.complete(request["messages"], **{k: v for k, v in request.items() if k != "messages"})
        texts.append(out.text)
        tokens += out.completion_tokens
        seconds += out.seconds
        sampler = backend._llm._sampler
        if isinstance(sampler, GrammarFirstGreedy):
            steps += sampler.steps
            masks += sampler.full_masks
    return texts, tokens, seconds, steps, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "src" / "reaseq" / "resources" / "demo.yaml")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--offset", type=int, default=1000, help="first catalogue item (away from the start, which the quality set uses)")
    parser.add_argument("--block", type=int, default=4, help="requests per alternation block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / "grammar_first")
    parser.add_argument("--out", type=Path, default=RESULTS / "knowledge_grammar_first.json")
    args = parser.parse_args()

    run = open_run(args.config, [], args.work_dir / "run")
    knowledge = run.config.knowledge
    knowledge.agents.progress = False
    items = items_from_table(pl.read_parquet(run.root / "data" / "items.parquet"), knowledge.agents)[args.offset : args.offset + args.items]
    base_cfg = knowledge.backend.llama_cpp.model_copy(update={"n_threads": args.threads})
    backends = {flag: LlamaCppBackend(base_cfg.model_copy(update={"grammar_first": flag})) for flag in (False, True)}
    recorder = Recorder(backends[False])
    generate_knowledge(items, recorder, knowledge.agents, knowledge.decoding, cache=None)
    requests = recorder.requests
    totals = {flag: {"texts": [], "tokens": 0, "seconds": 0.0, "steps": 0, "masks": 0} for flag in backends}
    for start in range(0, len(requests), args.block):
        for flag, backend in backends.items():
            texts, tokens, seconds, steps, masks = asyncio.run(_replay(backend, requests[start : start + args.block]))
            t = totals[flag]
            t["texts"] += texts
            t["tokens"] += tokens
            t["seconds"] += seconds
            t["steps"] += steps
            t["masks"] += masks
        print(f"  {min(start + args.block, len(requests))}/{len(requests)} requests", file=sys.stderr)
    chain_tps = totals[False]["tokens"] / totals[False]["seconds"]
    fast_tps = totals[True]["tokens"] / totals[True]["seconds"]
    identical = sum(a == b for a, b in zip(totals[False]["texts"], totals[True]["texts"], strict=True)) / len(requests)
    rows = [
        {"name": "llama_cpp_chain", "metrics": {"tokens_per_s": chain_tps, "speedup": 1.0, "tokens": float(totals[False]["tokens"])}},
        {
            "name": "llama_cpp_grammar_first",
            "metrics": {
                "tokens_per_s": fast_tps,
                "speedup": fast_tps / chain_tps,
                "identical_answers": identical,
                "full_mask_rate": totals[True]["masks"] / max(totals[True]["steps"], 1),
                "tokens": float(totals[True]["tokens"]),
            },
        },
    ]
    protocol = (
        f"{len(items)} ML-100K movies (catalogue positions {args.offset}..{args.offset + len(items) - 1}), agents and decoding of "
        f"{args.config.name}, {len(requests)} recorded requests replayed on both samplers in alternating blocks of {args.block}; "
        f"{args.threads} llama.cpp thread(s); tokens_per_s = generated tokens / call seconds (prompt evaluation included); "
        "identical_answers = share of requests whose answer text is the same on both; full_mask_rate = share of sampled "
        "tokens where the best token broke the grammar and the whole vocabulary was masked."
    )
    finish("knowledge_grammar_first", run.config, protocol, [knowledge.decoding.seed or 0], rows, METRICS, args.out, model_id=backends[True].model_id)


if __name__ == "__main__":
    main()
