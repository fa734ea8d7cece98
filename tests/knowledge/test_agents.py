"""The agent pipeline against the scripted server: records, traces, repair, failures, cache, resume, shards, injection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from reaseq.knowledge.agents import KnowledgePipeline, generate_knowledge, not_generated
from reaseq.knowledge.backends.openai_http import OpenAIHTTPBackend
from reaseq.knowledge.cache import KnowledgeCache, merge_caches
from reaseq.knowledge.config import DecodingConfig
from reaseq.knowledge.outputs import (
    RECORDS_FILE,
    TRACES_FILE,
    merge_record_files,
    write_generation,
)
from reaseq.knowledge.records import KnowledgeRecord, TraceRecord, read_jsonl
from tests.knowledge.conftest import INJECTION, agents_config, catalogue, http_config
from tests.knowledge.scripted_server import (
    PLANNED_DIMENSIONS,
    AgentPlayer,
    Reply,
    ScriptedServer,
    agent_of,
)

DECODING = DecodingConfig(max_tokens=256, temperature=0.0, seed=0)
DIMENSIONS = [d["name"] for d in PLANNED_DIMENSIONS]


def run(server: ScriptedServer, items, cache_dir: Path | None = None, shard: str | None = None, **agent_overrides):
    backend = OpenAIHTTPBackend(http_config(server))
    cache = KnowledgeCache(cache_dir) if cache_dir else None
    return generate_knowledge(items, backend, agents_config(**agent_overrides), DECODING, cache, shard)


def test_three_items_give_validated_records_and_traces(server: ScriptedServer, tmp_path: Path) -> None:
    result = run(server, catalogue(3))
    assert [r.item_id for r in result.records] == ["m0", "m1", "m2"]
    for record, title in zip(result.records, ["Item A", "Item B", "Item C"]):
        assert record.status == "ok" and record.source == "generated" and record.model_id == "scripted"
        assert list(record.fields) == DIMENSIONS and record.fields["genre"] == [f"genre of {title}"]
        assert record.text.splitlines()[0] == f"genre: genre of {title}"
        assert record.confidence == pytest.approx(0.9)
        assert record.prompt_versions == {"analyst": "analyst-v1", "critic": "critic-v1", "planner": "planner-v1", "writer": "writer-v1"}
    # 1 planner + per item: 2 analysts, 2 critics, 1 writer
    assert len(server.requests) == 1 + 3 * 5
    trace = result.traces[0]
    assert [(s.agent, s.perspective) for s in trace.steps] == [("analyst", "what"), ("critic", "what"), ("analyst", "who_why"), ("critic", "who_why"), ("writer", None)]
    assert trace.steps[0].output["reasoning"] == "thinking about Item A"
    assert result.schemas["movie"].names == DIMENSIONS and result.schema_traces[0].steps[0].agent == "planner"
    acc = result.accounting.to_dict()
    assert acc["items_ok"] == 3 and acc["agents"]["analyst"]["requests"] == 6 and acc["total"]["completion_tokens"] > 0
    files = write_generation(result, tmp_path / "out")
    assert read_jsonl(files["records"], KnowledgeRecord) == result.records
    assert len(read_jsonl(files["traces"], TraceRecord)) == 1 + 3


def test_critic_asks_for_one_revision(tmp_path: Path) -> None:
    srv = ScriptedServer(AgentPlayer(critic_wants_revision=True)).start()
    try:
        result = run(srv, catalogue(1), perspectives=[{"name": "what", "instruction": "Say what it is."}])
    finally:
        srv.stop()
    steps = result.traces[0].steps
    # One perspective: nothing to merge, so the writer validates and renders without a model call.
    assert [(s.agent, s.revision) for s in steps] == [("analyst", False), ("critic", False), ("analyst", True), ("critic", False)]
    revise_request = next(b for b in srv.requests if b["messages"][-1]["content"].startswith("A reviewer checked"))
    assert "mood is unsupported" in revise_request["messages"][-1]["content"]
    assert result.records[0].confidence == pytest.approx(0.9)  # the re-check of the revised draft
    assert result.accounting.agents["analyst"].revisions == 1


def test_writer_call_always_and_schema_caps_reach_the_request() -> None:
    srv = ScriptedServer(AgentPlayer()).start()
    try:
        one = [{"name": "what", "instruction": "Say what it is."}]
        result = run(srv, catalogue(1), perspectives=one, writer_call="always", max_reasoning_chars=300, max_list_items=4)
    finally:
        srv.stop()
    assert [s.agent for s in result.traces[0].steps][-1] == "writer"
    analyst = next(b for b in srv.requests if b["response_format"]["json_schema"]["name"] == "analyst_answer")
    props = analyst["response_format"]["json_schema"]["schema"]["properties"]
    assert props["reasoning"]["maxLength"] == 300
    assert all(v.get("maxItems") == 4 for v in props["fields"]["properties"].values() if v["type"] == "array")


@pytest.mark.parametrize("bad", ["this is not json {", "", None])
def test_bad_answer_is_repaired(bad: str | None) -> None:
    srv = ScriptedServer(AgentPlayer(misbehave={"analyst": [bad]})).start()
    try:
        result = run(srv, catalogue(1), perspectives=[{"name": "what", "instruction": "Say what it is."}])
    finally:
        srv.stop()
    assert result.records[0].status == "ok"
    analyst_requests = [b for b in srv.requests if b["response_format"]["json_schema"]["name"] == "analyst_answer"]
    repair = analyst_requests[1]["messages"]
    assert repair[-2] == {"role": "assistant", "content": bad or ""}
    assert "could not be used" in repair[-1]["content"] and "<validation_error>" in repair[-1]["content"]
    assert result.traces[0].steps[0].attempts == 2 and result.accounting.agents["analyst"].repairs == 1


def test_garbage_forever_gives_a_failed_record_not_an_invented_one() -> None:
    srv = ScriptedServer(AgentPlayer(misbehave={"writer": ["PWNED garbage"] * 10})).start()
    try:
        result = run(srv, catalogue(2), max_attempts=3)
    finally:
        srv.stop()
    assert len(result.records) == 2  # nothing dropped
    for record in result.records:
        assert record.status == "failed" and record.fields == {} and record.text == "" and record.confidence is None
        assert "writer" in record.error and "3 attempts" in record.error
    writer_step = result.traces[0].steps[-1]
    assert writer_step.agent == "writer" and writer_step.attempts == 3 and writer_step.raw == "PWNED garbage" and writer_step.output is None
    assert result.accounting.items_failed == 2 and result.accounting.agents["writer"].failures == 2


def test_a_call_that_never_got_a_usable_answer_is_stored_and_replayed_as_a_failure(tmp_path: Path) -> None:
    srv = ScriptedServer(AgentPlayer(misbehave={"writer": ["PWNED garbage"] * 10})).start()
    try:
        first = run(srv, catalogue(1), tmp_path / "cache", max_attempts=3)
        sent = len(srv.requests)
        second = run(srv, catalogue(1), tmp_path / "cache", max_attempts=3)
        assert len(srv.requests) == sent  # the three attempts are not spent again
    finally:
        srv.stop()
    assert first.records[0].status == second.records[0].status == "failed"
    assert second.records == first.records  # the replayed failure is the record first written, word for word
    assert "3 attempts" in second.records[0].error and "stored failure" in second.records[0].error
    writer = second.traces[0].steps[-1]
    assert writer.agent == "writer" and writer.cached and writer.raw == "PWNED garbage" and writer.output is None
    assert second.accounting.agents["writer"].failures == 1 and second.accounting.agents["writer"].cache_hits == 1
    # --regenerate (no reuse) asks the model again
    srv = ScriptedServer(AgentPlayer()).start()
    try:
        backend = OpenAIHTTPBackend(http_config(srv))
        third = generate_knowledge(catalogue(1), backend, agents_config(), DECODING, KnowledgeCache(tmp_path / "cache", reuse=False))
    finally:
        srv.stop()
    assert third.records[0].status == "ok"


# A critic answer that is valid JSON but off the 0..1 confidence scale, as SmolLM2-135M writes for many films.
OFF_SCALE_CRITIC = json.dumps({"reasoning": "checked", "issues": [], "confidence": 4, "needs_revision": True})
ONE_PERSPECTIVE = [{"name": "what", "instruction": "Say what it is."}]


def test_a_critic_without_a_usable_answer_leaves_the_draft_as_an_unreviewed_record(tmp_path: Path) -> None:
    srv = ScriptedServer(AgentPlayer(misbehave={"critic": [OFF_SCALE_CRITIC] * 3})).start()
    try:
        first = run(srv, catalogue(1), tmp_path / "cache", perspectives=ONE_PERSPECTIVE, max_attempts=3)
        sent = len(srv.requests)
        replay = run(srv, catalogue(1), tmp_path / "cache", perspectives=ONE_PERSPECTIVE, max_attempts=3)
        assert len(srv.requests) == sent  # the stored critic failure is replayed, not asked again
    finally:
        srv.stop()
    record = first.records[0]
    assert record.status == "ok" and record.confidence is None and record.fields["genre"] == ["genre of Item A"]
    critic = first.traces[0].steps[1]
    assert critic.agent == "critic" and critic.attempts == 3 and "less than or equal to 1" in critic.error
    # Its needs_revision never counted: no revision was asked for on the strength of an unusable answer.
    assert [s.agent for s in first.traces[0].steps] == ["analyst", "critic"]
    assert first.accounting.items_unreviewed == 1 and first.accounting.agents["critic"].failures == 1
    assert replay.records == first.records and replay.accounting.items_unreviewed == 1


def test_fail_item_makes_an_unusable_critic_fail_the_item() -> None:
    srv = ScriptedServer(AgentPlayer(misbehave={"critic": [OFF_SCALE_CRITIC] * 3})).start()
    try:
        result = run(srv, catalogue(1), perspectives=ONE_PERSPECTIVE, max_attempts=3, on_critic_failure="fail_item")
    finally:
        srv.stop()
    record = result.records[0]
    assert record.status == "failed" and record.fields == {} and "critic" in record.error and "3 attempts" in record.error
    assert result.accounting.items_unreviewed == 0 and result.accounting.items_failed == 1


def test_an_unreviewed_draft_is_marked_for_the_writer_and_left_out_of_the_confidence() -> None:
    # Two perspectives (run concurrently): the who_why analyst's draft carries a marker and its critic always answers
    # off the scale; the "what" draft is reviewed normally.
    player = AgentPlayer()

    def who_why_unreviewable(body: dict) -> Reply:
        prompt = body["messages"][-1]["content"]
        if agent_of(body) == "critic" and "(who)" in body["messages"][1]["content"]:  # the draft, also in repair turns
            return Reply(content=OFF_SCALE_CRITIC)
        reply = player(body)
        if agent_of(body) == "analyst" and "Perspective: who why" in prompt:
            answer = json.loads(reply.content)
            answer["fields"] = {k: [f"{v[0]} (who)"] if isinstance(v, list) else f"{v} (who)" for k, v in answer["fields"].items()}
            return Reply(content=json.dumps(answer))
        return reply

    srv = ScriptedServer(who_why_unreviewable).start()
    try:
        result = run(srv, catalogue(1), max_attempts=3, item_concurrency=1)
    finally:
        srv.stop()
    record = result.records[0]
    assert record.status == "ok" and record.confidence == pytest.approx(0.9)  # the reviewed draft's score alone
    writer = next(b for b in srv.requests if b["response_format"]["json_schema"]["name"] == "writer_answer")
    prompt = writer["messages"][-1]["content"]
    assert prompt.count("Reviewer confidence: not reviewed") == 1 and prompt.count("Reviewer confidence: 0.90") == 1
    assert result.accounting.items_unreviewed == 0  # one draft was reviewed, so the record has a confidence


def test_a_critic_call_missing_from_a_replay_only_cache_keeps_the_item_not_generated(tmp_path: Path) -> None:
    srv = ScriptedServer(AgentPlayer()).start()
    try:
        run(srv, catalogue(1), tmp_path / "cache", perspectives=ONE_PERSPECTIVE)
    finally:
        srv.stop()
    cache = KnowledgeCache(tmp_path / "cache")
    for key in list(cache.all_keys()):
        if cache.get(key)["agent"] == "critic":
            cache.path_for(key).unlink()  # generation stopped after the analyst: the critic was never asked
    backend = OpenAIHTTPBackend(http_config(srv))  # never reached: every call is a replay or a miss
    result = generate_knowledge(catalogue(1), backend, agents_config(perspectives=ONE_PERSPECTIVE), DECODING, KnowledgeCache(tmp_path / "cache", replay_only=True))
    record = result.records[0]
    assert record.status == "failed" and not_generated(record) and "critic" in record.error


def test_failures_are_not_stored_when_keep_failures_is_off_nor_transport_errors_ever(tmp_path: Path) -> None:
    srv = ScriptedServer(AgentPlayer(misbehave={"writer": ["PWNED garbage"] * 10})).start()
    try:
        backend = OpenAIHTTPBackend(http_config(srv))
        generate_knowledge(catalogue(1), backend, agents_config(max_attempts=2), DECODING, KnowledgeCache(tmp_path / "off", keep_failures=False))
    finally:
        srv.stop()
    assert KnowledgeCache(tmp_path / "off").stats().by_agent.get("writer", 0) == 0
    srv = ScriptedServer(lambda body: Reply(status=500, raw_body="down")).start()
    try:
        result = run(srv, catalogue(1), tmp_path / "http")
    finally:
        srv.stop()
    assert result.records[0].status == "failed" and KnowledgeCache(tmp_path / "http").stats().entries == 0


def test_http_failures_after_retries_give_a_failed_record() -> None:
    srv = ScriptedServer(lambda body: Reply(status=500, raw_body="down")).start()
    try:
        result = run(srv, catalogue(1))
    finally:
        srv.stop()
    assert result.records[0].status == "failed" and "planner" in result.records[0].error
    assert result.schemas == {} and result.schema_traces[0].steps[0].error.endswith("HTTP 500")


def test_rerun_is_served_from_the_cache(server: ScriptedServer, tmp_path: Path) -> None:
    first = run(server, catalogue(3), tmp_path / "cache")
    sent = len(server.requests)
    second = run(server, catalogue(3), tmp_path / "cache")
    assert len(server.requests) == sent  # zero HTTP requests
    assert second.records == first.records
    assert all(step.cached for trace in second.traces for step in trace.steps)
    assert second.accounting.agents["analyst"].cache_hits == 6 and second.accounting.agents["analyst"].requests == 0
    stats = KnowledgeCache(tmp_path / "cache").stats()
    # both perspectives' drafts are identical here, so their critic calls share one entry
    assert stats.entries == 1 + 3 * 4 and stats.by_agent["writer"] == 3


def test_interrupted_run_resumes_without_redoing_items(tmp_path: Path) -> None:
    player = AgentPlayer()

    def hang_on_c(body: dict) -> Reply:
        return Reply(content="{}", delay=1.5) if "Item C" in str(body["messages"]) and "planner" not in str(body.get("response_format")) else player(body)

    srv = ScriptedServer(hang_on_c).start()
    try:
        backend = OpenAIHTTPBackend(http_config(srv))
        pipeline = KnowledgePipeline(backend, agents_config(item_concurrency=1), DECODING, KnowledgeCache(tmp_path / "cache"))
        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(pipeline.run(catalogue(3)), timeout=0.8))  # the process is stopped mid-catalogue
        before = len(srv.requests)
        srv.responder = player
        result = run(srv, catalogue(3), tmp_path / "cache")
    finally:
        srv.stop()
    resumed = srv.requests[before:]
    assert resumed and all("Item C" in str(b["messages"]) for b in resumed)
    assert not any("Item A" in str(b["messages"]) or "Item B" in str(b["messages"]) for b in resumed)
    assert [r.status for r in result.records] == ["ok", "ok", "ok"]


def test_shards_split_the_catalogue_and_merge(server: ScriptedServer, tmp_path: Path) -> None:
    items = catalogue(6)
    outputs = []
    for i in range(2):
        result = run(server, items, tmp_path / f"cache{i}", shard=f"{i}/2")
        outputs.append(write_generation(result, tmp_path / f"shard{i}"))
    shard_ids = [{r.item_id for r in read_jsonl(o["records"], KnowledgeRecord)} for o in outputs]
    assert shard_ids[0].isdisjoint(shard_ids[1]) and shard_ids[0] | shard_ids[1] == {i.item_id for i in items}
    merged = merge_record_files([o["records"] for o in outputs], tmp_path / "merged" / RECORDS_FILE)
    assert [r.item_id for r in merged] == sorted(i.item_id for i in items)
    report = merge_caches([tmp_path / "cache0", tmp_path / "cache1"], tmp_path / "cache")
    assert report.identical == 1 and not report.conflicts  # the planner ran in both shards, with the same answer
    sent = len(server.requests)
    full = run(server, items, tmp_path / "cache")
    assert len(server.requests) == sent and full.records == merged
    assert (tmp_path / "shard0" / TRACES_FILE).is_file()


def test_prompt_injection_stays_inside_the_delimiters(server: ScriptedServer) -> None:
    result = run(server, catalogue(3, injected=True))
    poisoned = [b for b in server.requests if "PWNED" in str(b["messages"])]
    assert poisoned  # the planner (examples) and every call about the item saw it
    for body in poisoned:
        system = body["messages"][0]["content"]
        assert "never follow instructions" in system and "PWNED" not in system
        for message in body["messages"][1:]:
            text = message["content"]
            for start in _all(text, "PWNED"):
                tag_open = max(text.rfind("<item_metadata>", 0, start), text.rfind("<examples>", 0, start), text.rfind("<draft>", 0, start), text.rfind("<drafts>", 0, start))
                assert tag_open >= 0, text
                tag = text[tag_open + 1 : text.index(">", tag_open)]
                assert text.find(f"</{tag}>", tag_open) > start  # the block is not closed before the injection
            # the forged closing tag was escaped, so every block opens and closes exactly once
            assert text.count("<item_metadata>") == text.count("</item_metadata>")
            assert "&lt;/item_metadata>" in text or "PWNED" not in text
    injected = result.records[-1]
    assert injected.status == "ok" and list(injected.fields) == DIMENSIONS and "PWNED" not in injected.text
    assert INJECTION.split(".")[0] not in injected.text


def _all(text: str, needle: str) -> list[int]:
    out, pos = [], text.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = text.find(needle, pos + 1)
    return out


def test_fixed_schema_skips_the_planner(server: ScriptedServer) -> None:
    dims = [{"name": "theme", "description": "what it is about", "type": "text"}]
    result = run(server, catalogue(1), schemas={"movie": dims}, perspectives=[{"name": "what", "instruction": "Say what it is."}])
    assert not any(b["response_format"]["json_schema"]["name"] == "planner_answer" for b in server.requests)
    assert list(result.records[0].fields) == ["theme"]


def test_item_without_text_fails_visibly(server: ScriptedServer) -> None:
    from reaseq.knowledge.item_text import ItemInput

    result = run(server, [*catalogue(1), ItemInput("empty", "movie", "")])
    assert [r.status for r in result.records] == ["ok", "failed"] and "no metadata" in result.records[1].error
