"""One evaluation report: report.md, report.html and PNG plots, all written atomically into one folder."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The object-oriented Figure API renders with Agg without touching pyplot's global backend state.
from matplotlib.figure import Figure

from reaseq.evaluate.aggregate import format_mean_sd
from reaseq.io import write_text, write_with

CURVES_PNG = "curves.png"
# Slice bars show the first of these a slice reports, unless the caller names one.
PREFERRED_BAR_METRICS = ("auc", "gauc", "ndcg@10", "hr@10", "mrr")
# Per-bucket sample counts already appear as "count"; repeating them as a metric column is noise.
HIDDEN_SLICE_METRICS = ("n",)
PLOT_DPI = 120
SUBPLOT_SIZE_IN = (5.0, 3.2)

Cell = str


@dataclass(frozen=True)
class _Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class _Table:
    header: list[Cell]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class _Image:
    file: str
    alt: str


@dataclass(frozen=True)
class _Pre:
    text: str


@dataclass(frozen=True)
class _Para:
    text: str


_Block = _Heading | _Table | _Image | _Pre | _Para


def _value(metric: Any) -> float:
    """The plotted number of a metric that may be a float or a mean_sd dict."""
    raw = metric.get("mean") if isinstance(metric, Mapping) else metric
    return float("nan") if raw is None else float(raw)


def _error(metric: Any) -> float:
    return float(metric.get("sd", 0.0)) if isinstance(metric, Mapping) else 0.0


def _protocol_text(protocol: Mapping[str, Any] | str) -> str:
    if isinstance(protocol, str):
        return protocol
    return json.dumps(protocol, indent=2, default=str, ensure_ascii=False)


def _slice_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [m for m in row["metrics"] if m not in columns and m not in HIDDEN_SLICE_METRICS]
    return columns


def _pick_bar_metric(columns: Sequence[str], requested: str | None) -> str | None:
    if requested is not None:
        return requested if requested in columns else None
    preferred = [m for m in PREFERRED_BAR_METRICS if m in columns]
    return (preferred or list(columns) or [None])[0]


def _save_figure(figure: Figure, path: Path, dpi: int) -> None:
    figure.tight_layout()
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))


def _plot_slice(path: Path, slicing: str, rows: Sequence[Mapping[str, Any]], metric: str, dpi: int) -> None:
    width, height = SUBPLOT_SIZE_IN
    figure = Figure(figsize=(max(width, 1.1 * len(rows)), height))
    axes = figure.add_subplot()
    labels = [f"{row['bucket']}\n(n={row['count']:,})" for row in rows]
    values = [_value(row["metrics"].get(metric)) for row in rows]
    errors = [_error(row["metrics"].get(metric)) for row in rows]
    axes.bar(range(len(rows)), values, yerr=errors, capsize=3)
    axes.set_xticks(range(len(rows)), labels, fontsize=8)
    axes.set_xlabel(slicing.replace("_", " "))
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} by {slicing.replace('_', ' ')}")
    _save_figure(figure, path, dpi)


def _plot_curves(path: Path, curves: Mapping[str, Sequence[float]], dpi: int) -> None:
    width, height = SUBPLOT_SIZE_IN
    # One panel per curve: losses and AUCs live on different scales.
    figure = Figure(figsize=(width, height * len(curves)))
    for i, (name, values) in enumerate(curves.items(), start=1):
        axes = figure.add_subplot(len(curves), 1, i)
        epochs = range(1, len(values) + 1)
        axes.plot(epochs, [float(v) for v in values], marker="o")
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
    _save_figure(figure, path, dpi)


def _build(
    out_dir: Path,
    title: str,
    metrics: Mapping[str, Any],
    slices: Mapping[str, Sequence[Mapping[str, Any]]] | None,
    curves: Mapping[str, Sequence[float]] | None,
    protocol: Mapping[str, Any] | str,
    notes: str,
    bar_metric: str | None,
    digits: int,
    dpi: int,
) -> list[_Block]:
    """The report as format-neutral blocks; plots are written on the way."""
    blocks: list[_Block] = [_Heading(title, 1), _Heading("Metrics")]
    blocks.append(_Table(["metric", "value"], [[name, format_mean_sd(v, digits)] for name, v in metrics.items()]))
    blocks += [_Heading("Protocol"), _Pre(_protocol_text(protocol))]

    for slicing, rows in (slices or {}).items():
        if not rows:
            continue
        columns = _slice_columns(rows)
        blocks.append(_Heading(f"By {slicing.replace('_', ' ')}"))
        table_rows = [
            [str(row["bucket"]), f"{row['count']:,}"]
            + [format_mean_sd(row["metrics"].get(c, float("nan")), digits) for c in columns]
            for row in rows
        ]
        blocks.append(_Table(["bucket", "count", *columns], table_rows))
        metric = _pick_bar_metric(columns, bar_metric)
        if metric is not None:
            file = f"slice_{slicing}.png"
            _plot_slice(out_dir / file, slicing, rows, metric, dpi)
            blocks.append(_Image(file, f"{metric} by {slicing}"))

    drawable = {name: values for name, values in (curves or {}).items() if len(values) > 0}
    if drawable:
        _plot_curves(out_dir / CURVES_PNG, drawable, dpi)
        blocks += [_Heading("Training curves"), _Image(CURVES_PNG, "training curves")]
    if notes:
        blocks += [_Heading("Notes"), _Para(notes)]
    return blocks


def _markdown(blocks: Sequence[_Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, _Table):
            lines = ["| " + " | ".join(block.header) + " |", "|" + "|".join(["---"] * len(block.header)) + "|"]
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, _Image):
            parts.append(f"![{block.alt}]({block.file})")
        elif isinstance(block, _Pre):
            parts.append("```\n" + block.text + "\n```")
        else:
            parts.append(block.text)
    return "\n\n".join(parts) + "\n"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}"
    "td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:.75rem;overflow:auto}"
    "img{max-width:100%}"
)


def _html(title: str, blocks: Sequence[_Block]) -> str:
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{_CSS}</style></head><body>"]
    for block in blocks:
        if isinstance(block, _Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Table):
            head = "".join(f"<th>{esc(c)}</th>" for c in block.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, _Image):
            parts.append(f"<p><img src='{esc(block.file)}' alt='{esc(block.alt)}'></p>")
        elif isinstance(block, _Pre):
            parts.append(f"<pre>{esc(block.text)}</pre>")
        else:
            parts.append(f"<p>{esc(block.text)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(
    out_dir: Path,
    title: str,
    metrics: Mapping[str, Any],
    slices: Mapping[str, Sequence[Mapping[str, Any]]] | None,
    curves: Mapping[str, Sequence[float]] | None,
    protocol: Mapping[str, Any] | str,
    notes: str = "",
    *,
    bar_metric: str | None = None,
    digits: int = 4,
    dpi: int = PLOT_DPI,
) -> Path:
    """Write report.md, report.html and their PNG plots into `out_dir`; returns the path of report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks = _build(out_dir, title, metrics, slices, curves, protocol, notes, bar_metric, digits, dpi)
    write_text(out_dir / "report.html", _html(title, blocks))
    return write_text(out_dir / "report.md", _markdown(blocks))
