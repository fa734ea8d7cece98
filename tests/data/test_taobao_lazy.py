"""Taobao UserBehavior with dataset.max_rows: only the first rows are read, so memory follows max_rows, not the file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from reaseq.config import DatasetConfig
from reaseq.data.loaders import load_raw, taobao
from reaseq.errors import InputError

ROWS = 200_000
SUBSET = 1_000

# Peak resident memory of one load, in a fresh process, after a first small load has started polars and its
# thread pool, so that only the load itself is measured. VmHWM is the peak of this process's own memory map;
# ru_maxrss would not do: Linux carries the launching process's peak (pytest with torch) over the exec.
PEAK_PROBE = """
import json, sys
from pathlib import Path
from reaseq.config import DatasetConfig
from reaseq.data.loaders import load_raw
warm, big, rows, cache = sys.argv[1:5]
def peak_mb():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
load_raw(DatasetConfig(name="taobao", loader="taobao", path=Path(warm)), Path(cache))
before = peak_mb()
max_rows = None if rows == "all" else int(rows)
tables = load_raw(DatasetConfig(name="taobao", loader="taobao", path=Path(big), max_rows=max_rows), Path(cache))
print(json.dumps({"rows": tables.interactions.height, "peak_mb": peak_mb() - before}))
"""


def behaviours(rows: int, seed: int = 0) -> pl.DataFrame:
    """UserBehavior-shaped rows: user, item, category, behaviour, timestamp."""
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "user_id": rng.integers(1, 1_000_000, rows),
            "item_id": rng.integers(1, 5_000_000, rows),
            "category_id": rng.integers(1, 10_000, rows),
            "behavior": rng.choice(["pv", "buy", "cart", "fav"], rows),
            "timestamp": 1_511_544_070 + np.arange(rows),
        }
    )


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    """A 200k-row UserBehavior.csv (about 7 MB) and its rows."""
    frame = behaviours(ROWS)
    path = tmp_path_factory.mktemp("taobao") / "UserBehavior.csv"
    frame.write_csv(path, include_header=False)
    return path, frame


def load(path: Path, tmp_path: Path, max_rows: int | None) -> pl.DataFrame:
    return load_raw(DatasetConfig(name="taobao", loader="taobao", path=path, max_rows=max_rows), tmp_path / "cache").interactions


def test_max_rows_gives_the_first_rows_and_never_parses_the_rest(big_file: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    path, frame = big_file
    broken = tmp_path / "UserBehavior.csv"
    broken.write_bytes(path.read_bytes() + b"1,2,3,click,1511544070\n")  # a bad last line, far past the subset
    subset = load(broken, tmp_path, SUBSET)
    assert subset.height == SUBSET
    assert subset["user_id"].to_list() == frame["user_id"].head(SUBSET).cast(pl.String).to_list()
    assert subset["timestamp"].to_list() == frame["timestamp"].head(SUBSET).to_list()
    with pytest.raises(InputError, match=f"line {ROWS + 1}") as info:
        load(broken, tmp_path, None)  # the whole file is read: the bad line is found
    assert str(broken) in str(info.value) and "behavior" in str(info.value)


def peak_mb(warm: Path, big: Path, rows: int | None, tmp_path: Path) -> dict:
    probe = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE, str(warm), str(big), "all" if rows is None else str(rows), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from Linux /proc")
def test_peak_memory_follows_max_rows_not_the_file(big_file: tuple[Path, pl.DataFrame], tmp_path: Path) -> None:
    path, _ = big_file
    warm = tmp_path / "warm.csv"
    behaviours(50, seed=1).write_csv(warm, include_header=False)
    file_mb = path.stat().st_size / 2**20
    subset = peak_mb(warm, path, SUBSET, tmp_path)
    whole = peak_mb(warm, path, None, tmp_path)
    assert subset["rows"] == SUBSET and whole["rows"] == ROWS
    # Reading the file at all would cost at least its size; the subset costs a small fraction of that.
    assert whole["peak_mb"] > file_mb  # the probe does see a whole read
    assert subset["peak_mb"] < file_mb / 2 and subset["peak_mb"] < whole["peak_mb"] / 10, (subset, whole, file_mb)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("trailing_newline", [True, False])
def test_first_lines_cuts_at_line_ends_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: bytes, trailing_newline: bool) -> None:
    monkeypatch.setattr(taobao, "READ_BLOCK_BYTES", 7)  # lines straddle blocks, and some end exactly on one
    lines = [f"{i},{i * 7},{i % 3},pv,{1511544070 + i}".encode() + ending for i in range(12)]
    if not trailing_newline:
        lines[-1] = lines[-1].removesuffix(ending)
    path = tmp_path / "UserBehavior.csv"
    path.write_bytes(b"".join(lines))
    for count in range(len(lines) + 3):
        assert taobao.first_lines(path, count) == b"".join(lines[:count]), count
