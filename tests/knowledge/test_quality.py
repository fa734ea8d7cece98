"""Knowledge quality scoring against ground-truth genres and years."""

from __future__ import annotations

import polars as pl
import pytest

from reaseq.knowledge.quality import decades_in, genres_in, ground_truth, score_source
from reaseq.knowledge.records import KnowledgeRecord, TraceRecord, TraceStep

ITEMS = pl.DataFrame({"item_id": ["a", "b", "c"], "genres": [["Comedy", "Children's"], ["Sci-Fi"], ["Drama"]], "year": [1995, 1982, 1999]})


def generated(item_id: str, genres: list[str], era: str) -> KnowledgeRecord:
    fields = {"genres": genres, "era": era}
    return KnowledgeRecord(item_id=item_id, fields=fields, text=f"genres: {'; '.join(genres)}\nera: {era}", model_id="m", source="generated")


def test_genre_and_decade_extraction() -> None:
    assert genres_in("A funny family film; science fiction elements") == {"Comedy", "Children's", "Sci-Fi"}
    assert genres_in("warning: drama-free") == set()  # 'war' inside 'warning' and 'drama-free' are not genres
    assert decades_in("released in 1995") == {1990} and decades_in("the '80s") == {1980} and decades_in("1960s cinema") == {1960}


def test_scores_count_hallucinated_and_missed_genres() -> None:
    truth = ground_truth(ITEMS)
    records = [
        generated("a", ["Comedy", "Horror"], "1990s"),  # 1 right, 1 hallucinated, 1 missed; decade right
        generated("b", ["science fiction"], "1970s"),  # right genre, wrong decade
        KnowledgeRecord(item_id="c", model_id="m", source="generated", status="failed", error="timeout"),
    ]
    trace = TraceRecord(item_id="a", category="movie", steps=[
        TraceStep(agent="analyst", prompt_version="v", cache_key="k", attempts=2, output={"x": 1}),
        TraceStep(agent="critic", prompt_version="v", cache_key="k", attempts=1, output={"x": 1}),
        TraceStep(agent="analyst", prompt_version="v", cache_key="k", attempts=1, output={"x": 1}, revision=True),
    ])
    quiet = TraceRecord(item_id="b", category="movie", steps=[TraceStep(agent="critic", prompt_version="v", cache_key="k", attempts=1, output={"x": 1})])
    scores = score_source(records, [trace, quiet], truth)
    assert scores["coverage"] == pytest.approx(2 / 3)
    assert scores["genre_precision"] == pytest.approx(2 / 3) and scores["genre_recall"] == pytest.approx(2 / 3)
    assert scores["year_precision"] == pytest.approx(1 / 2) and scores["year_recall"] == pytest.approx(1 / 2)
    assert scores["valid_json_rate"] == pytest.approx(4 / 5) and scores["critic_revision_rate"] == pytest.approx(1 / 2)


def test_imported_text_is_scored_from_the_text() -> None:
    record = KnowledgeRecord(item_id="b", fields={"summary": "A space adventure from 1982."}, text="summary: A space adventure from 1982.", model_id="ref", source="imported")
    scores = score_source([record], [], ground_truth(ITEMS, ["b"]))
    assert scores["genre_recall"] == 1.0 and scores["genre_precision"] == pytest.approx(1 / 2) and scores["year_precision"] == 1.0


def test_items_a_replay_only_run_finds_no_answers_for_are_counted_and_not_covered() -> None:
    from reaseq.knowledge.agents import NOT_CACHED

    truth = ground_truth(ITEMS)
    records = [
        generated("a", ["Comedy"], "1990s"),
        KnowledgeRecord(item_id="b", model_id="m", source="generated", status="failed", error=f"agent 'critic' failed: {NOT_CACHED}; run ..."),
        KnowledgeRecord(item_id="c", model_id="m", source="generated", status="failed", error="garbage JSON after 3 attempts"),
    ]
    scores = score_source(records, [], truth)
    assert scores["not_in_cache"] == 1.0
    assert scores["coverage"] == pytest.approx(1 / 3)  # never generated or failed when generated: not covered either way
