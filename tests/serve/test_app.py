"""The HTTP app: scores, limits and 4xx answers, readiness, atomic reload, admin token."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient

from reaseq.serve import Scorer, load_ranker, tables_from_data
from reaseq.serve.app import CONFIG_ENV, RUN_DIR_ENV, app_from_env, create_app
from reaseq.serve.config import ServeConfig
from tests.serve.conftest import TEST_SERVE

USER, OTHER = "user7", "user21"


def items_of(run: Path) -> list[str]:
    """Raw item ids in dense-id order (index 0 = padding)."""
    return ["<pad>", *pl.read_parquet(run / "data" / "items.parquet").sort("item_idx")["item_id"].to_list()]


@pytest.fixture(scope="module")
def client(trained_run: Path) -> Iterator[TestClient]:
    """A started app (lifespan ran) on the shared trained run."""
    with TestClient(create_app(trained_run, ServeConfig(**TEST_SERVE))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def items(trained_run: Path) -> list[str]:
    return items_of(trained_run)


def test_scores_match_eager_model(client: TestClient, trained_run: Path, items: list[str]) -> None:
    candidates = items[1:41]
    response = client.post("/score", json={"user_id": USER, "candidates": candidates})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["scores"]) == len(candidates) and all(0.0 < s < 1.0 for s in body["scores"])
    assert body["model"] == "din@seed0" and body["tables_version"] == client.get("/readyz").json()["tables_version"]
    assert float(response.headers["server-timing"].split("dur=")[1]) > 0  # model time, apart from network and parsing

    model, cfg, data = load_ranker(trained_run)
    scorer = Scorer(model, tables_from_data(data, trained_run / "data", cfg.protocol.ctr.max_len), "din")
    batch = scorer.batch(USER, candidates)
    with torch.no_grad():
        expected = torch.sigmoid(model(batch)).tolist()
    assert body["scores"] == pytest.approx(expected, abs=1e-6)


def test_fresh_history_and_cold_users(client: TestClient, items: list[str]) -> None:
    candidates = items[1:21]

    def score(**extra: Any) -> list[float]:
        response = client.post("/score", json={"user_id": USER, "candidates": candidates, **extra})
        assert response.status_code == 200, response.text
        return response.json()["scores"]

    base = score()
    assert score(history=items[30:36]) != pytest.approx(base, abs=1e-6)
    assert score(history=items[30:36], history_actions=["5"] * 6) != pytest.approx(score(history=items[30:36], history_actions=["1"] * 6), abs=1e-6)
    assert score(user_id="brand-new") == pytest.approx(score(user_id="another-new"), abs=1e-7)
    assert score(user_id="brand-new") != pytest.approx(base, abs=1e-6)


REQUEST_LIMIT_CASES: dict[str, tuple[Any, int, str]] = {
    # name: (json body, expected status, text the answer must contain)
    "empty candidates": ({"user_id": USER, "candidates": []}, 422, "at least 1"),
    "too many candidates": ({"user_id": USER, "candidates": ["m1"] * (TEST_SERVE["max_candidates"] + 1)}, 422, "at most 50"),
    "unknown candidates": ({"user_id": USER, "candidates": ["m1", "ghost-1", "m2", "ghost-2"]}, 422, "ghost-2"),
    "unknown history item": ({"user_id": USER, "candidates": ["m1"], "history": ["ghost-3"]}, 422, "ghost-3"),
    "unknown action": ({"user_id": USER, "candidates": ["m1"], "history": ["m2"], "history_actions": ["click?"]}, 422, "click?"),
    "actions without matching history": ({"user_id": USER, "candidates": ["m1"], "history": ["m2", "m3"], "history_actions": ["4"]}, 422, "one action per history item"),
    "actions without history": ({"user_id": USER, "candidates": ["m1"], "history_actions": ["4"]}, 422, "one action per history item"),
    "history too long": ({"user_id": USER, "candidates": ["m1"], "history": ["m2"] * (TEST_SERVE["max_history"] + 1)}, 422, "at most 30"),
    "missing user": ({"candidates": ["m1"]}, 422, "user_id"),
    "missing candidates": ({"user_id": USER}, 422, "candidates"),
    "candidates not a list": ({"user_id": USER, "candidates": "m1"}, 422, "candidates"),
    "float id": ({"user_id": USER, "candidates": [1.5]}, 422, "candidates"),
    "bool id": ({"user_id": True, "candidates": ["m1"]}, 422, "user_id"),
    "null id": ({"user_id": None, "candidates": ["m1"]}, 422, "user_id"),
    "nested id": ({"user_id": USER, "candidates": [["m1"]]}, 422, "candidates"),
    "empty string id": ({"user_id": "", "candidates": ["m1"]}, 422, "user_id"),
    "id too long": ({"user_id": "u" * 17, "candidates": ["m1"]}, 422, "at most 16"),
    "unknown field": ({"user_id": USER, "candidates": ["m1"], "debug": True}, 422, "debug"),
    "not an object": ([USER, "m1"], 422, "body"),
    "huge integer id": ({"user_id": 10**40, "candidates": [10**40]}, 422, "unknown"),
}


@pytest.mark.parametrize("case", list(REQUEST_LIMIT_CASES))
def test_bad_requests_get_clear_4xx(client: TestClient, case: str) -> None:
    body, status, needle = REQUEST_LIMIT_CASES[case]
    response = client.post("/score", json=body)
    assert response.status_code == status, response.text
    assert needle in response.text


def test_unknown_ids_are_listed_in_the_answer(client: TestClient) -> None:
    response = client.post("/score", json={"user_id": USER, "candidates": ["m1", "ghost-1", "m2", "ghost-2", "ghost-1"]})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "unknown_id" and error["loc"] == ["body", "candidates"] and error["ids"] == ["ghost-1", "ghost-2"]


RAW_BODY_CASES: dict[str, tuple[bytes, dict[str, str], int]] = {
    "malformed json": (b'{"user_id": "user7", "candidates": [', {"content-type": "application/json"}, 422),
    "not json at all": (b"user7,m1", {"content-type": "text/csv"}, 422),
    "empty body": (b"", {"content-type": "application/json"}, 422),
    "NaN id": (b'{"user_id": NaN, "candidates": ["m1"]}', {"content-type": "application/json"}, 422),
    "invalid utf-8": (b'{"user_id": "\xff\xfe", "candidates": ["m1"]}', {"content-type": "application/json"}, 400),  # FastAPI: body not decodable
    "body over the limit": (json.dumps({"user_id": USER, "candidates": ["m1"] * 2000}).encode(), {"content-type": "application/json"}, 413),
}


@pytest.mark.parametrize("case", list(RAW_BODY_CASES))
def test_malformed_bodies_get_4xx(client: TestClient, case: str) -> None:
    content, headers, status = RAW_BODY_CASES[case]
    response = client.post("/score", content=content, headers=headers)
    assert response.status_code == status, response.text


def test_streamed_body_over_the_limit_gets_413(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the size is only known while reading
        yield b'{"user_id": "user7", "candidates": ['
        for _ in range(1000):
            yield b'"m1", '
        yield b'"m1"]}'

    response = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "larger than 4096 bytes" in response.text


def test_wrong_method_and_path_are_4xx(client: TestClient) -> None:
    assert client.get("/score").status_code == 405
    assert client.post("/nope", json={}).status_code == 404


def test_health_readiness_and_openapi(trained_run: Path, client: TestClient) -> None:
    not_started = TestClient(create_app(trained_run, ServeConfig(**TEST_SERVE)))  # lifespan not run: nothing loaded
    assert not_started.get("/healthz").status_code == 200
    assert not_started.get("/readyz").status_code == 503
    assert not_started.post("/score", json={"user_id": USER, "candidates": ["m1"]}).status_code == 503

    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["items"] == 60
    schema = client.get("/openapi.json").json()
    assert {"/score", "/healthz", "/readyz", "/admin/reload"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["ScoreRequest"]["properties"]
    assert request["candidates"]["maxItems"] == TEST_SERVE["max_candidates"] and request["candidates"]["minItems"] == 1


def append_event(run: Path, user_idx: int, item_idx: int, action: int) -> None:
    """Log one more event for a user in the run's prepared interactions (what a data refresh brings)."""
    inter = pl.read_parquet(run / "data" / "interactions.parquet")
    last = inter.filter(pl.col("user_idx") == user_idx).tail(1)
    extra = last.with_columns(pl.col("timestamp") + 1, pl.lit(item_idx, dtype=pl.Int32).alias("item_idx"), pl.lit(action, dtype=pl.Int8).alias("action"))
    pl.concat([inter, extra]).sort(["user_idx", "timestamp"]).write_parquet(run / "data" / "interactions.parquet")


def test_reload_swaps_tables_and_failed_reload_keeps_them(run_copy: Callable[[], Path]) -> None:
    run = run_copy()
    items = items_of(run)
    candidates = items[1:31]
    with TestClient(create_app(run, ServeConfig(**TEST_SERVE))) as client:
        before = client.post("/score", json={"user_id": USER, "candidates": candidates}).json()
        # What the new event will do, predicted through the fresh-history path of the old tables.
        predicted = client.post("/score", json={"user_id": USER, "candidates": candidates, "history": [items[44]], "history_actions": ["5"]}).json()

        unchanged = client.post("/admin/reload")
        assert unchanged.status_code == 200 and unchanged.json()["changed"] is False

        user_idx = pl.read_parquet(run / "data" / "users.parquet").filter(pl.col("user_id") == USER)["user_idx"][0]
        action_5 = json.loads((run / "data" / "vocab.json").read_text())["actions"].index("5") + 1
        append_event(run, user_idx, 44, action_5)
        reloaded = client.post("/admin/reload")
        assert reloaded.status_code == 200 and reloaded.json()["changed"] is True
        after = client.post("/score", json={"user_id": USER, "candidates": candidates}).json()
        assert after["tables_version"] == reloaded.json()["tables_version"] != before["tables_version"]
        assert after["scores"] == pytest.approx(predicted["scores"], abs=1e-6)
        assert after["scores"] != pytest.approx(before["scores"], abs=1e-6)

        # A broken data folder: the reload fails with 409, the previous tables keep serving.
        good = (run / "data" / "interactions.parquet").read_bytes()
        (run / "data" / "interactions.parquet").write_bytes(b"truncated")
        failed = client.post("/admin/reload")
        assert failed.status_code == 409 and after["tables_version"] in failed.text
        again = client.post("/score", json={"user_id": USER, "candidates": candidates}).json()
        assert again == after
        assert client.get("/readyz").json()["last_reload_error"]

        # A changed item catalogue cannot be reloaded into a model trained on the old one.
        (run / "data" / "interactions.parquet").write_bytes(good)
        items_table = pl.read_parquet(run / "data" / "items.parquet")
        items_table.with_columns(pl.col("year_idx").reverse()).write_parquet(run / "data" / "items.parquet")
        refused = client.post("/admin/reload")
        assert refused.status_code == 409 and "catalogue" in refused.text
        assert client.post("/score", json={"user_id": USER, "candidates": candidates}).json() == after


def test_requests_during_reloads_see_one_consistent_version(run_copy: Callable[[], Path]) -> None:
    run = run_copy()
    items = items_of(run)
    candidates = items[1:11]
    with TestClient(create_app(run, ServeConfig(**TEST_SERVE))) as client:
        old = client.post("/score", json={"user_id": USER, "candidates": candidates}).json()
        user_idx = pl.read_parquet(run / "data" / "users.parquet").filter(pl.col("user_id") == USER)["user_idx"][0]
        append_event(run, user_idx, 50, 1)
        answers: list[dict] = []
        errors: list[int] = []

        def hammer() -> None:
            for _ in range(15):
                response = client.post("/score", json={"user_id": USER, "candidates": candidates})
                (answers.append(response.json()) if response.status_code == 200 else errors.append(response.status_code))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for thread in threads:
            thread.start()
        for _ in range(3):
            assert client.post("/admin/reload").status_code == 200
        for thread in threads:
            thread.join()
        new = client.post("/score", json={"user_id": USER, "candidates": candidates}).json()
    assert not errors and new["tables_version"] != old["tables_version"]
    by_version = {old["tables_version"]: old["scores"], new["tables_version"]: new["scores"]}
    for answer in answers:  # every answer is wholly from one table version
        assert answer["scores"] == pytest.approx(by_version[answer["tables_version"]], abs=1e-7)


def test_admin_token(trained_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REASEQ_SERVE_ADMIN_TOKEN", "s3cret")
    with TestClient(create_app(trained_run, ServeConfig(**TEST_SERVE))) as client:
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": b"Bearer s3cr\xe9t"}).status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_worker_factory_reads_the_environment(trained_run: Path, monkeypatch: pytest.MonkeyPatch, items: list[str]) -> None:
    monkeypatch.setenv(RUN_DIR_ENV, str(trained_run))
    monkeypatch.setenv(CONFIG_ENV, ServeConfig(max_candidates=3).model_dump_json())
    with TestClient(app_from_env()) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/score", json={"user_id": USER, "candidates": items[1:5]}).status_code == 422  # its own limit
        assert client.post("/score", json={"user_id": USER, "candidates": items[1:4]}).status_code == 200
