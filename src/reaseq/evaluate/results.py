"""The benchmark JSON record shared by every benchmark and its Markdown table.

Shape::

    {"benchmark", "command", "dataset", "protocol", "seeds", "date",
     "rows": [{"name", "metrics": {"auc": {"mean", "sd", "values"}, ...},
               "train_samples_per_s", "wall_s", ...optional "slices", "notes"...}]}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from reaseq.evaluate.aggregate import format_mean_sd

MISSING = "—"


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


def markdown_grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: the first column left-aligned (names), the others right-aligned (numbers)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def markdown_table(record: Mapping[str, Any], metrics: Sequence[str], digits: int = 4) -> str:
    """Rows x metrics as "mean ± sd", plus training samples/s and wall seconds, as a Markdown table."""
    rows = []
    for row in record["rows"]:
        cells = [str(row["name"])]
        cells += [format_mean_sd(row["metrics"][m], digits) if m in row["metrics"] else MISSING for m in metrics]
        cells.append(_number(row.get("train_samples_per_s"), ",.0f"))
        cells.append(_number(row.get("wall_s"), ",.1f"))
        rows.append(cells)
    return markdown_grid(["model", *metrics, "train samples/s", "wall s"], rows)
