"""The benchmark JSON record shared by every benchmark, its atomic writer and its Markdown table.

Shape::

    {"benchmark", "command", "dataset", "protocol", "seeds", "date",
     "rows": [{"name", "metrics": {"auc": {"mean", "sd", "values"}, ...},
               "train_samples_per_s", "wall_s", ...optional "slices", "notes"...}]}
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reaseq.evaluate.aggregate import format_mean_sd

JSON_INDENT = 2
# mkstemp creates owner-only files; results are meant to be read by everyone.
FILE_MODE = 0o644
MISSING = "—"


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Run `write` on a temp file next to `path`, then rename it over `path` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically (temp file in the same folder + os.replace)."""
    return _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_with_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Let `write(tmp_path)` produce the file (e.g. matplotlib savefig), then move it onto `path` atomically."""
    return _atomic(path, write)


def _json_safe(obj: Any) -> Any:
    # NaN/inf are not JSON; null keeps the file readable by every JSON parser.
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy / torch scalars and arrays
        return _json_safe(obj.tolist())
    return obj


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically; NaN and inf become null."""
    text = json.dumps(_json_safe(obj), indent=JSON_INDENT, ensure_ascii=False, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def benchmark_record(
    benchmark: str,
    command: str,
    dataset: str,
    protocol: Mapping[str, Any] | str,
    seeds: Sequence[int],
    rows: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The shared benchmark record; `date` is now in ISO 8601 UTC."""
    for i, row in enumerate(rows):
        if "name" not in row or "metrics" not in row:
            raise ValueError(f"benchmark row {i} needs 'name' and 'metrics', has {sorted(row)}")
    return {
        "benchmark": benchmark,
        "command": command,
        "dataset": dataset,
        "protocol": dict(protocol) if isinstance(protocol, Mapping) else protocol,
        "seeds": [int(s) for s in seeds],
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": [dict(row) for row in rows],
    }


def _number(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return format(value, fmt)


def markdown_table(record: Mapping[str, Any], metrics: Sequence[str], digits: int = 4) -> str:
    """Rows x metrics as "mean ± sd", plus training samples/s and wall seconds, as a Markdown table."""
    header = ["model", *metrics, "train samples/s", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in record["rows"]:
        cells = [str(row["name"])]
        cells += [format_mean_sd(row["metrics"][m], digits) if m in row["metrics"] else MISSING for m in metrics]
        cells.append(_number(row.get("train_samples_per_s"), ",.0f"))
        cells.append(_number(row.get("wall_s"), ",.1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
