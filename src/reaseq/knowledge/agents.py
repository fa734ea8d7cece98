"""The multi-agent chain of thought: planner -> analysts -> critic (-> one revision) -> writer, per item."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from statistics import fmean
from typing import Any

from tqdm import tqdm

from reaseq.io import sha256_text
from reaseq.knowledge.accounting import Accounting
from reaseq.knowledge.backends.base import BackendError, LLMBackend, Message
from reaseq.knowledge.cache import KnowledgeCache, cache_key, request_hash
from reaseq.knowledge.config import AgentsConfig, DecodingConfig, Perspective
from reaseq.knowledge.item_text import ItemInput
from reaseq.knowledge.prompts import PromptTemplate, load_prompts, prompt_versions
from reaseq.knowledge.records import (
    KnowledgeRecord,
    KnowledgeSchema,
    TraceRecord,
    TraceStep,
    render_text,
)
from reaseq.knowledge.sharding import select_shard
from reaseq.knowledge.structured import (
    Limits,
    OutputError,
    analyst_json_schema,
    critic_json_schema,
    describe_schema,
    parse_analyst,
    parse_critic,
    parse_planner,
    parse_writer,
    planner_json_schema,
    writer_json_schema,
)

NOT_CACHED = "not in the knowledge cache (replay-only run)"  # the error of a call a replay-only run could not replay
# Part of a stored failure's message, so the first run's record and every replay of it read the same.
STORED_FAILURE_HINT = " (a stored failure: `reaseq knowledge --regenerate` asks the model again)"

log = logging.getLogger("reaseq")


def not_generated(record: KnowledgeRecord) -> bool:
    """A failed record whose answers a replay-only run could not find: the model has not been asked yet."""
    return record.status == "failed" and NOT_CACHED in (record.error or "")


class StepFailed(Exception):
    """An agent call with no valid answer; its trace step says why.

    `answered`: the model answered every attempt, just never usably (now or in the stored failure replayed), as
    opposed to a call that was never answered (replay-only miss, transport error), which a rerun may still complete.
    """

    def __init__(self, step: TraceStep, answered: bool = False) -> None:
        super().__init__(f"agent '{step.agent}' failed: {step.error}")
        self.step = step
        self.answered = answered


@dataclass
class Draft:
    """One perspective's final draft and the critic's view of it."""

    perspective: str
    fields: dict[str, Any]
    issues: list[str]
    confidence: float | None  # None: the critic gave no usable answer (agents.on_critic_failure = keep_unreviewed)


@dataclass
class GenerationResult:
    """Everything one run produced: records and traces (input order), schemas, accounting."""

    records: list[KnowledgeRecord]
    traces: list[TraceRecord]
    schema_traces: list[TraceRecord]
    schemas: dict[str, KnowledgeSchema]
    accounting: Accounting


def _titled(schema: dict[str, Any], title: str) -> dict[str, Any]:
    # The title names the schema for OpenAI-style response_format; JSON-schema validators ignore it.
    return {"title": title, **schema}


def _in_schema_order(fields: dict[str, Any], schema: KnowledgeSchema) -> dict[str, Any]:
    # Prompts built from fields must not depend on dict order, or cache keys would drift between runs.
    return {name: fields[name] for name in schema.names if name in fields}


def planner_examples(items: Sequence[ItemInput], category: str, count: int) -> list[ItemInput]:
    """The items shown to the planner: chosen by id hash, so every shard and rerun picks the same ones."""
    pool = [i for i in items if i.category == category and i.text.strip()]
    return sorted(pool, key=lambda i: hashlib.sha256(i.item_id.encode("utf-8")).hexdigest())[:count]


class KnowledgePipeline:
    """Runs the agents for a catalogue against one backend, with a cache and bounded concurrency."""

    def __init__(
        self,
        backend: LLMBackend,
        agents: AgentsConfig,
        decoding: DecodingConfig,
        cache: KnowledgeCache | None = None,
        prompts: dict[str, PromptTemplate] | None = None,
    ) -> None:
        self.backend = backend
        self.cfg = agents
        self.decoding = decoding
        self.cache = cache
        self.prompts = prompts or load_prompts(agents.prompts_dir)
        self.versions = prompt_versions(self.prompts)
        self.limits = Limits(agents.max_reasoning_chars, agents.max_value_chars, agents.max_list_items)

    # --- one agent call -------------------------------------------------------------------------

    def _messages(self, agent: str, part: str, values: dict[str, object]) -> list[Message]:
        template = self.prompts[agent]
        return [{"role": "system", "content": template.render("system", {})}, {"role": "user", "content": template.render(part, values)}]

    async def _call(
        self,
        agent: str,
        messages: list[Message],
        json_schema: dict[str, Any],
        parse: Callable[[str], dict[str, Any]],
        item_text_hash: str,
        steps: list[TraceStep],
        perspective: str | None = None,
        revision: bool = False,
    ) -> dict[str, Any]:
        """One validated answer: from the cache, or from the model with parse-repair-retry."""
        template = self.prompts[agent]
        decoding = self.decoding.model_dump()
        key = cache_key(
            item_text_hash=item_text_hash,
            agent=agent,
            prompt_version=template.version,
            model_id=self.backend.model_id,
            decoding=decoding,
            request=request_hash(messages, json_schema),
        )
        step = TraceStep(agent=agent, perspective=perspective, prompt_version=template.version, cache_key=key, revision=revision)
        steps.append(step)
        if self.cache is not None and (entry := self.cache.get(key)) is not None:
            step.cached, step.attempts = True, int(entry.get("attempts", 1))
            if "failure" in entry:
                step.raw = entry.get("raw")
                step.error = entry["failure"]  # verbatim, so a replayed record equals the one first written
                raise StepFailed(step, answered=True)
            step.output = entry["output"]
            return entry["output"]
        if self.cache is not None and self.cache.replay_only:
            step.error = f"{NOT_CACHED}; run `reaseq knowledge` without knowledge.cache.replay_only to generate it"
            raise StepFailed(step)
        conversation = list(messages)
        error = "no attempt was made"
        for attempt in range(1, self.cfg.max_attempts + 1):
            step.attempts = attempt
            try:
                completion = await self.backend.complete(
                    conversation,
                    json_schema=json_schema,
                    max_tokens=self.decoding.max_tokens,
                    temperature=self.decoding.temperature,
                    seed=self.decoding.seed,
                    repeat_penalty=self.decoding.repeat_penalty,
                )
            except BackendError as exc:
                # The backend already retried transport failures; more attempts here would only repeat them.
                step.error = str(exc)
                raise StepFailed(step) from None
            step.prompt_tokens += completion.prompt_tokens
            step.completion_tokens += completion.completion_tokens
            step.seconds += completion.seconds
            try:
                output = parse(completion.text)
            except OutputError as exc:
                error = str(exc)
                step.raw = completion.text
                # Show the model only its latest bad answer and what is wrong with it, so the prompt does not grow.
                repair = template.render("repair", {"error": error})
                conversation = [*messages, {"role": "assistant", "content": completion.text}, {"role": "user", "content": repair}]
                continue
            step.output, step.raw = output, None
            if self.cache is not None:
                self.cache.put(key, {**self._entry_meta(step, item_text_hash, decoding), "output": output})
            return output
        step.error = f"no valid answer after {self.cfg.max_attempts} attempts; last problem: {error}"
        if self.cache is not None and self.cache.keep_failures:
            # The model answered every time, just not usably: asking again with the same request and decoding
            # would spend the same attempts on the same answers.
            step.error += STORED_FAILURE_HINT
            self.cache.put(key, {**self._entry_meta(step, item_text_hash, decoding), "failure": step.error, "raw": step.raw})
        raise StepFailed(step, answered=True)

    def _entry_meta(self, step: TraceStep, item_text_hash: str, decoding: dict[str, Any]) -> dict[str, Any]:
        """What a cache entry records besides the answer: who asked, with which prompt, model and decoding, at what cost."""
        return {
            "agent": step.agent,
            "perspective": step.perspective,
            "prompt_version": step.prompt_version,
            "model_id": self.backend.model_id,
            "item_text_hash": item_text_hash,
            "decoding": decoding,
            "attempts": step.attempts,
            "usage": {"prompt_tokens": step.prompt_tokens, "completion_tokens": step.completion_tokens, "seconds": step.seconds},
        }

    # --- planner --------------------------------------------------------------------------------

    async def plan_schema(self, category: str, examples: Sequence[ItemInput]) -> tuple[KnowledgeSchema | None, TraceRecord]:
        """The knowledge schema of one category (fixed in the config, or from the planner); None if the planner failed."""
        trace = TraceRecord(item_id=None, category=category)
        if category in self.cfg.schemas:
            return KnowledgeSchema(category=category, dimensions=self.cfg.schemas[category]), trace
        examples_text = "\n\n".join(f"Example {n}:\n{item.text}" for n, item in enumerate(examples, start=1))
        trace.item_text_hash = sha256_text(examples_text)
        values = {"category": category, "examples": examples_text, "min_dimensions": self.cfg.min_dimensions, "max_dimensions": self.cfg.max_dimensions}
        parse = partial(parse_planner, category=category, min_dimensions=self.cfg.min_dimensions, max_dimensions=self.cfg.max_dimensions)
        try:
            output = await self._call("planner", self._messages("planner", "user", values), _titled(planner_json_schema(self.limits, self.cfg.min_dimensions, self.cfg.max_dimensions), "planner_answer"), parse, trace.item_text_hash, trace.steps)
        except StepFailed:
            return None, trace
        return KnowledgeSchema(category=category, dimensions=output["dimensions"]), trace

    async def plan_schemas(self, items: Sequence[ItemInput]) -> tuple[dict[str, KnowledgeSchema | None], list[TraceRecord]]:
        """A schema per category of the whole catalogue (not of one shard, so every shard agrees)."""
        categories = sorted({item.category for item in items})
        planned = await asyncio.gather(*(self.plan_schema(c, planner_examples(items, c, self.cfg.planner_examples)) for c in categories))
        return {c: schema for c, (schema, _) in zip(categories, planned, strict=True)}, [trace for _, trace in planned]

    # --- per item -------------------------------------------------------------------------------

    async def _critique(self, item: ItemInput, schema: KnowledgeSchema, fields: dict[str, Any], steps: list[TraceStep], perspective: str) -> dict[str, Any]:
        values = {"schema": describe_schema(schema), "item": item.text, "draft": json.dumps(_in_schema_order(fields, schema), ensure_ascii=False, indent=1)}
        return await self._call("critic", self._messages("critic", "user", values), _titled(critic_json_schema(self.limits), "critic_answer"), parse_critic, item.text_hash, steps, perspective)

    async def _review(self, item: ItemInput, schema: KnowledgeSchema, fields: dict[str, Any], steps: list[TraceStep], perspective: str) -> dict[str, Any] | None:
        """The critic's answer, or None when it answered only unusably and the config keeps such drafts unreviewed."""
        try:
            return await self._critique(item, schema, fields, steps, perspective)
        except StepFailed as exc:
            # The failed step stays in the trace, so an unreviewed record can always be told from a reviewed one.
            if exc.answered and self.cfg.on_critic_failure == "keep_unreviewed":
                return None
            raise

    async def _analyse(self, item: ItemInput, schema: KnowledgeSchema, perspective: Perspective, steps: list[TraceStep]) -> Draft:
        values = {"perspective": perspective.name.replace("_", " "), "instruction": perspective.instruction, "schema": describe_schema(schema), "item": item.text}
        messages = self._messages("analyst", "user", values)
        answer_schema = _titled(analyst_json_schema(schema, self.limits), "analyst_answer")
        parse = partial(parse_analyst, schema=schema)
        draft = await self._call("analyst", messages, answer_schema, parse, item.text_hash, steps, perspective.name)
        critique = await self._review(item, schema, draft["fields"], steps, perspective.name)
        if critique is not None and self.cfg.revise and critique["needs_revision"]:
            feedback = "\n".join(f"- {issue}" for issue in critique["issues"]) or "- the reviewer asked for a revision without details"
            revise = self.prompts["analyst"].render("revise", {"critique": feedback})
            previous = {"reasoning": draft["reasoning"], "fields": _in_schema_order(draft["fields"], schema)}
            conversation = [*messages, {"role": "assistant", "content": json.dumps(previous, ensure_ascii=False)}, {"role": "user", "content": revise}]
            draft = await self._call("analyst", conversation, answer_schema, parse, item.text_hash, steps, perspective.name, revision=True)
            if self.cfg.recheck_after_revision:
                critique = await self._review(item, schema, draft["fields"], steps, perspective.name)
        if critique is None:
            return Draft(perspective.name, draft["fields"], [], None)
        return Draft(perspective.name, draft["fields"], critique["issues"], float(critique["confidence"]))

    async def _write(self, item: ItemInput, schema: KnowledgeSchema, drafts: list[Draft], steps: list[TraceStep]) -> dict[str, Any]:
        if len(drafts) == 1 and self.cfg.writer_call == "when_merging":
            # One reviewed draft: a model call could only copy it (or corrupt it); the record is that draft.
            return _in_schema_order(drafts[0].fields, schema)
        blocks = []
        for draft in drafts:
            issues = "; ".join(draft.issues) or "none"
            confidence = "not reviewed" if draft.confidence is None else f"{draft.confidence:.2f}"
            blocks.append(f"Perspective: {draft.perspective}\nFields: {json.dumps(_in_schema_order(draft.fields, schema), ensure_ascii=False)}\nReviewer confidence: {confidence}\nReviewer issues: {issues}")
        values = {"schema": describe_schema(schema), "item": item.text, "drafts": "\n\n".join(blocks)}
        output = await self._call("writer", self._messages("writer", "user", values), _titled(writer_json_schema(schema, self.limits), "writer_answer"), partial(parse_writer, schema=schema), item.text_hash, steps)
        return output["fields"]

    def _failed(self, item: ItemInput, error: str) -> KnowledgeRecord:
        return KnowledgeRecord(item_id=item.item_id, model_id=self.backend.model_id, prompt_versions=self.versions, source="generated", status="failed", error=error)

    async def generate_item(self, item: ItemInput, schema: KnowledgeSchema | None, schema_error: str | None = None) -> tuple[KnowledgeRecord, TraceRecord]:
        """The record and reasoning trace of one item; failures give a failed record, never made-up text."""
        trace = TraceRecord(item_id=item.item_id, category=item.category, item_text_hash=item.text_hash)
        if schema is None:
            why = f": {schema_error}" if schema_error else ""
            return self._failed(item, f"no knowledge schema for category '{item.category}' (the planner failed{why}; see the schema traces)"), trace
        if not item.text.strip():
            return self._failed(item, "the item has no metadata text to reason about"), trace
        branches: list[list[TraceStep]] = [[] for _ in self.cfg.perspectives]
        outcomes = await asyncio.gather(
            *(self._analyse(item, schema, p, steps) for p, steps in zip(self.cfg.perspectives, branches, strict=True)), return_exceptions=True
        )
        for steps in branches:  # perspective order, whatever order the calls finished in
            trace.steps.extend(steps)
        for outcome in outcomes:
            if isinstance(outcome, StepFailed):
                return self._failed(item, str(outcome)), trace
            if isinstance(outcome, BaseException):
                raise outcome
        drafts = [o for o in outcomes if isinstance(o, Draft)]
        try:
            fields = await self._write(item, schema, drafts, trace.steps)
        except StepFailed as exc:
            return self._failed(item, str(exc)), trace
        record = KnowledgeRecord(
            item_id=item.item_id,
            fields=fields,
            text=render_text(fields, schema.names),
            # The mean over the reviewed perspectives (each critic score is about one draft the writer merged); None
            # when no draft was reviewed.
            confidence=fmean(scores) if (scores := [d.confidence for d in drafts if d.confidence is not None]) else None,
            model_id=self.backend.model_id,
            prompt_versions=self.versions,
            source="generated",
        )
        return record, trace

    # --- whole catalogue ------------------------------------------------------------------------

    async def run(self, items: Sequence[ItemInput], *, shard: str | None = None, priority: Mapping[str, float] | None = None) -> GenerationResult:
        """Plan schemas on the whole catalogue, then generate the records of this shard's items.

        With `priority` (item id -> score) items start in descending score (ties and unscored items in catalogue
        order, unscored last); the records are returned in catalogue order either way.
        """
        start = time.perf_counter()
        schemas, schema_traces = await self.plan_schemas(items)
        planner_errors = {t.category: step.error for t in schema_traces for step in t.steps if step.error}
        selected = select_shard(items, shard)
        results: list[tuple[KnowledgeRecord, TraceRecord] | None] = [None] * len(selected)
        queue: asyncio.Queue[int] = asyncio.Queue()
        order = list(range(len(selected)))
        if priority is not None:
            order = sorted(order, key=lambda i: -priority.get(selected[i].item_id, -math.inf))
        for index in order:
            queue.put_nowait(index)
        bar = tqdm(total=len(selected), desc="knowledge", unit="item", disable=not self.cfg.progress)

        async def worker() -> None:
            while True:
                try:
                    index = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                item = selected[index]
                results[index] = await self.generate_item(item, schemas.get(item.category), planner_errors.get(item.category))
                bar.update(1)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.cfg.item_concurrency, max(len(selected), 1)))))
        finally:
            bar.close()
        done = [pair for pair in results if pair is not None]
        records = [record for record, _ in done]
        traces = [trace for _, trace in done]
        accounting = Accounting(wall_seconds=time.perf_counter() - start)
        accounting.add_traces([*schema_traces, *traces])
        accounting.add_records(records)
        failed = accounting.items_failed
        if failed:
            log.warning("knowledge: %d of %d items failed (see the error of their records)", failed, len(records))
        return GenerationResult(records, traces, schema_traces, {c: s for c, s in schemas.items() if s is not None}, accounting)


def generate_knowledge(
    items: Sequence[ItemInput],
    backend: LLMBackend,
    agents: AgentsConfig,
    decoding: DecodingConfig,
    cache: KnowledgeCache | None = None,
    shard: str | None = None,
    priority: Mapping[str, float] | None = None,
) -> GenerationResult:
    """Synchronous entry point: run the pipeline in a fresh event loop and close the backend after."""

    async def _main() -> GenerationResult:
        try:
            return await KnowledgePipeline(backend, agents, decoding, cache).run(items, shard=shard, priority=priority)
        finally:
            await backend.aclose()

    return asyncio.run(_main())
