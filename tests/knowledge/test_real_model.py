"""The real embedded model (SmolLM2-135M GGUF through llama-cpp-python) end to end on a few items."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import polars as pl
import pytest

from reaseq.knowledge.agents import generate_knowledge
from reaseq.knowledge.backends.grammar_first import GrammarFirstGreedy
from reaseq.knowledge.backends.llama_cpp import LlamaCppBackend
from reaseq.knowledge.cache import KnowledgeCache
from reaseq.knowledge.config import AgentsConfig, DecodingConfig, LlamaCppConfig
from reaseq.knowledge.item_text import items_from_table
from reaseq.knowledge.records import KnowledgeRecord

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (make setup installs it)"),
]

MOVIES = pl.DataFrame({"item_id": ["Toy Story (1995)", "Heat (1995)"], "title": ["Toy Story", "Heat"], "year": [1995, 1995], "genres": [["Animation", "Children's", "Comedy"], ["Action", "Crime", "Thriller"]]})
SCHEMA = [{"name": "genres", "description": "the film's genres", "type": "list"}, {"name": "mood", "description": "emotional tone", "type": "text"}]


def test_embedded_model_writes_valid_records_and_replays_from_the_cache(tmp_path: Path) -> None:
    agents = AgentsConfig.model_validate({
        "progress": False, "default_category": "movie", "item_text_fields": ["title", "year", "genres"], "schemas": {"movie": SCHEMA},
        "perspectives": [{"name": "profile", "instruction": "Describe the movie and who would enjoy it."}],
    })
    decoding = DecodingConfig(max_tokens=160, repeat_penalty=1.15)
    items = items_from_table(MOVIES, agents)
    cache = KnowledgeCache(tmp_path / "cache")
    first = generate_knowledge(items, LlamaCppBackend(LlamaCppConfig(n_ctx=2048, n_threads=2)), agents, decoding, cache)
    assert first.records[0].model_id.startswith("SmolLM2-135M-Instruct") and len(first.records) == 2
    for record, trace in zip(first.records, first.traces, strict=True):
        KnowledgeRecord.model_validate(record.model_dump())  # the schema holds for what the real model produced
        assert [s.agent for s in trace.steps][:2] == ["analyst", "critic"]
        assert all(s.prompt_tokens > 0 for s in trace.steps if not s.cached)
        if record.status == "ok":  # fields are the schema's, the text renders them, the critic's score is kept
            assert set(record.fields) <= {"genres", "mood"} and record.text and 0.0 <= (record.confidence or 0.0) <= 1.0
        else:  # a failure names the agent and the reason, never made-up text
            assert record.error and not record.text
    assert first.accounting.items_ok >= 1, [r.error for r in first.records]
    assert first.accounting.to_dict()["total"]["completion_tokens"] > 0
    # Rerun: every call is served from the cache, same records, and the model is never loaded.
    backend = LlamaCppBackend(LlamaCppConfig(n_ctx=2048, n_threads=2))
    second = generate_knowledge(items, backend, agents, decoding, KnowledgeCache(tmp_path / "cache"))
    assert second.records == first.records and backend._llm is None


def test_grammar_first_sampling_gives_the_tokens_of_llama_cpps_own_chain() -> None:
    """Greedy + repeat penalty + JSON grammar: checking the best token first must not change a single token."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "genres": {"type": "array", "items": {"type": "string"}}}, "required": ["reasoning", "genres"]}
    prompts = [
        [{"role": "system", "content": "Always answer with a single JSON object."}, {"role": "user", "content": "Describe the film Heat (1995): reasoning, then its genres."}],
        [{"role": "user", "content": "Toy Story (1995). Think step by step about who would enjoy it, then list genres, in JSON."}],
    ]
    answers: dict[bool, list[str]] = {}
    for grammar_first in (False, True):
        backend = LlamaCppBackend(LlamaCppConfig(n_ctx=1024, n_threads=2, grammar_first=grammar_first))
        answers[grammar_first] = [
            asyncio.run(backend.complete(messages, json_schema=schema, max_tokens=96, temperature=0.0, seed=0, repeat_penalty=1.15)).text for messages in prompts
        ]
        sampler = backend._llm._sampler
        if grammar_first:  # the fast path ran, and its fallback (best token breaks the grammar) was exercised
            assert isinstance(sampler, GrammarFirstGreedy) and 0 < sampler.full_masks < sampler.steps
        else:
            assert not isinstance(sampler, GrammarFirstGreedy)
        asyncio.run(backend.aclose())
    assert answers[True] == answers[False] and all(answers[True])


def test_prompt_evaluation_threads_do_not_change_answers() -> None:
    """n_threads_batch stays out of the cache key, so the thread count for prompt evaluation must not change tokens."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string"}, "mood": {"type": "string"}}, "required": ["reasoning", "mood"]}
    messages = [{"role": "user", "content": "Fargo (1996), Crime|Drama|Thriller. Reason step by step, then give its mood, in JSON."}]
    answers = {}
    for threads in (1, 2):
        backend = LlamaCppBackend(LlamaCppConfig(n_ctx=1024, n_threads=1, n_threads_batch=threads))
        answers[threads] = asyncio.run(backend.complete(messages, json_schema=schema, max_tokens=64, temperature=0.0, seed=0, repeat_penalty=1.15)).text
        assert backend._llm.context_params.n_threads_batch == threads
        asyncio.run(backend.aclose())
    assert answers[1] == answers[2] and answers[1]
