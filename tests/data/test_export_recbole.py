"""RecBole export: the files RecBole's benchmark_filename mode reads, row for row our own splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reaseq.config import CTRProtocolConfig, DatasetConfig, TopKProtocolConfig
from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.data.export_recbole import export_ctr, export_topk
from reaseq.data.loaders import load_raw
from reaseq.data.prepare import prepare_tables
from reaseq.data.protocols import SPLIT_NAMES, TEST, TRAIN, VALID, build_ctr_samples, build_topk_split

CTR_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\tlabel:float"
TOPK_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
ITEM_HEADER = "item_id:token\tgenre:token_seq\trelease_year:token"


def read_rows(path: Path) -> tuple[str, list[list[str]]]:
    """Header line and tab-split data rows, read as raw text (RecBole does no unquoting)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text and '"' not in text
    lines = text.rstrip("\n").split("\n")
    return lines[0], [line.split("\t") for line in lines[1:]]


def check_tokens(row: list[str], header: str) -> None:
    """Every field on its column; ids are single tokens; `token_seq` fields hold single-space-separated tokens."""
    fields = [h.split(":") for h in header.split("\t")]
    assert len(row) == len(fields)
    for value, (name, kind) in zip(row, fields):
        assert "\t" not in value
        if name in ("user_id", "item_id"):
            assert value and " " not in value
        elif kind == "token_seq" and value:
            assert all(token and "\t" not in token for token in value.split(" ")), value


def expected_history(data: SequenceData, user: int, pos: int, max_len: int) -> list[str]:
    start = max(int(data.offsets[user]), pos - max_len)
    return [f"i{i}" for i in data.items[start:pos]]


@pytest.mark.parametrize("max_len", [4, 50])
def test_export_ctr(prepared, tmp_path: Path, max_len: int) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, CTRProtocolConfig(min_hist=1, max_len=max_len))
    paths = export_ctr(data, samples, max_len, tmp_path / "out", "synth-ctr")
    folder = tmp_path / "out" / "synth-ctr"
    assert sorted(p.name for p in paths) == sorted(
        ["synth-ctr.train.inter", "synth-ctr.valid.inter", "synth-ctr.test.inter", "synth-ctr.item", "synth-ctr.user"]
    )
    total = 0
    for split in (TRAIN, VALID, TEST):
        header, rows = read_rows(folder / f"synth-ctr.{SPLIT_NAMES[split]}.inter")
        assert header == CTR_HEADER
        part = samples.of(split)
        assert len(rows) == len(part) > 0
        total += len(rows)
        for row, user, pos, item, label in zip(rows, part.user, part.pos, part.item, part.label):
            check_tokens(row, header)
            assert row[0] == f"u{user}" and row[2] == f"i{item}"
            assert float(row[3]) == label
            history = row[1].split(" ")
            assert len(history) <= max_len
            assert history == expected_history(data, user, pos, max_len)  # oldest -> newest, the most recent max_len
            assert row[2] not in history  # the target event is never its own history (items are distinct per user)
    assert total == len(samples)

    header, rows = read_rows(folder / "synth-ctr.item")
    assert header == ITEM_HEADER
    assert [r[0] for r in rows] == [f"i{i}" for i in range(1, data.n_items + 1)]
    genres = data.vocab["genres"]
    for row, codes, year in zip(rows, data.item_genres[1:], data.item_year[1:]):
        check_tokens(row, header)
        assert (row[1].split(" ") if row[1] else []) == [genres[c - 1] for c in codes if c > 0]
        assert row[2] == (str(year + data.vocab["year_min"] - 1) if year > 0 else "")
    assert any(r[2] == "" for r in rows)  # the unknown years stay empty

    header, rows = read_rows(folder / "synth-ctr.user")
    assert header == "user_id:token\tage:token\tgender:token\toccupation:token"
    assert [r[0] for r in rows] == [f"u{u}" for u in range(data.n_users)]
    used = {f"u{u}" for u in samples.user}
    assert used <= {r[0] for r in rows}


@pytest.mark.parametrize("max_len", [3, 50])
def test_export_topk(prepared, tmp_path: Path, max_len: int) -> None:
    data = prepared().data
    split = build_topk_split(data, TopKProtocolConfig(min_user_interactions=3))
    export_topk(split, max_len, tmp_path / "out", "synth-topk")
    folder = tmp_path / "out" / "synth-topk"
    rows_of = {}
    for suffix in ("train", "valid", "test"):
        header, rows = read_rows(folder / f"synth-topk.{suffix}.inter")
        assert header == TOPK_HEADER
        for row in rows:
            check_tokens(row, header)
            assert 1 <= len(row[1].split(" ")) <= max_len
        rows_of[suffix] = rows

    # train: every (prefix -> next item) except each user's last two; the first event has no prefix.
    lengths = np.diff(data.offsets)[split.users]
    assert len(rows_of["train"]) == int((lengths - 3).sum())
    expected_train = []
    for u in split.users:
        for pos in range(int(data.offsets[u]) + 1, int(data.offsets[u + 1]) - 2):
            expected_train.append([f"u{u}", " ".join(expected_history(data, u, pos, max_len)), f"i{data.items[pos]}"])
    assert rows_of["train"] == expected_train

    # valid and test: one row per user; the history is everything before the target (test includes the valid target).
    for suffix, targets in (("valid", split.valid_pos), ("test", split.test_pos)):
        rows = rows_of[suffix]
        assert len(rows) == len(split.users)
        for row, u, pos in zip(rows, split.users, targets):
            assert row[0] == f"u{u}" and row[2] == f"i{data.items[pos]}"
            history = row[1].split(" ")
            assert history == expected_history(data, u, pos, max_len)
            if max_len >= 50:
                assert len(history) == pos - data.offsets[u]  # nothing before the target is left out
    for valid_row, test_row in zip(rows_of["valid"], rows_of["test"]):
        assert test_row[1].split(" ")[-1] == valid_row[2]


def test_export_tokens_never_contain_separators(tmp_path: Path) -> None:
    """Genres and ids with spaces (tabular sources) become single tokens; values stay on their columns."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "inter.csv").write_text(
        "user_id,item_id,timestamp,rating\n"
        + "".join(f"user {u},item {i},{100 * u + i},{1 + (u + i) % 5}\n" for u in range(4) for i in range(5)),
        encoding="utf-8",
    )
    (src / "items.csv").write_text(
        "item_id,title,genres,year\n" + "".join(f"item {i},Title {i},Film Noir|Drama|Science Fiction,{1990 + i}\n" for i in range(5)),
        encoding="utf-8",
    )
    (src / "users.csv").write_text("user_id,occupation\n" + "".join(f"user {u},{['health care', 'lawyer'][u % 2]}\n" for u in range(4)), encoding="utf-8")
    cfg = DatasetConfig(name="spaces", loader="tabular", path=src, interactions="inter.csv", items="items.csv", users="users.csv")
    prepare_tables(load_raw(cfg, tmp_path / "cache"), cfg, tmp_path / "prep")
    data = load_prepared(tmp_path / "prep")
    samples = build_ctr_samples(data, CTRProtocolConfig())
    export_ctr(data, samples, 50, tmp_path / "out", "spaces")
    export_topk(build_topk_split(data, TopKProtocolConfig()), 50, tmp_path / "out", "spaces-topk")
    files = sorted((tmp_path / "out").rglob("*.*"))
    assert len(files) == 8
    for path in files:
        header, rows = read_rows(path)
        for row in rows:
            check_tokens(row, header)
    header, rows = read_rows(tmp_path / "out" / "spaces" / "spaces.item")
    assert {tuple(r[1].split(" ")) for r in rows} == {("Film_Noir", "Drama", "Science_Fiction")}
