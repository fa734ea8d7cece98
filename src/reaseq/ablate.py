"""`reaseq ablate`: the full ReaSeq ablation on the `ctr` protocol (base DIN, each path alone, both paths, KAR).

Every row is the run's DIN config plus the model fields of reaseq.ablation_rows, trained with the same epochs, lr,
batch size and patience (an equal tuning budget) and selected on validation AUC; each (row, seed) result is
cached under <run>/ablation/rows so an interrupted ablation resumes. RecBole's DIN, the external peer, is added by
benchmarks/ablation.py, which needs RecBole's own environment (`make recbole`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from reaseq import pipeline
from reaseq.ablation_rows import ABLATION_ROWS, DEFAULT_ROWS
from reaseq.config import RunConfig
from reaseq.data.batches import history_lengths, item_train_counts
from reaseq.data.dataset import SequenceData, load_prepared
from reaseq.data.protocols import TRAIN, CTRSamples, load_ctr_samples
from reaseq.errors import ConfigError
from reaseq.evaluate.aggregate import aggregate_runs, format_mean_sd, mean_sd
from reaseq.io import sha256_text, write_json, write_text
from reaseq.runs import RunDir

log = logging.getLogger("reaseq")

METRICS = ["auc", "gauc", "logloss"]
SUBSETS = ("sparse_users", "long_tail")
ABLATION_DIR = "ablation"


def row_config(cfg: RunConfig, row: str, tables: Path | None, inferred: Path | None) -> RunConfig:
    """The run's config with one ablation row's model fields, pointed at the run's RER tables and GBR table."""
    if row not in ABLATION_ROWS:
        raise ConfigError(None, "rows", f"unknown ablation row '{row}'", f"use some of {list(ABLATION_ROWS)}")
    fields = dict(ABLATION_ROWS[row])
    if fields.get("knowledge", "none") != "none" or fields.get("semantic_ids"):
        fields["knowledge_tables"] = tables
    if fields.get("inferred"):
        fields["inferred_table"] = inferred
    model = cfg.model.model_validate({**cfg.model.model_dump(), "knowledge": "none", "semantic_ids": False, "inferred": False, **fields})
    return cfg.model_copy(update={"model": model})


def test_subsets(data: SequenceData, samples: CTRSamples, sparse_history: int, long_tail: int) -> dict[str, np.ndarray]:
    """Masks over the ctr samples: sparse users (few earlier events) and long-tail targets (few training samples)."""
    item_pop = item_train_counts(data, np.unique(samples.of(TRAIN).pos))
    return {"sparse_users": history_lengths(data, samples) <= sparse_history, "long_tail": item_pop[samples.item] <= long_tail}


def row_key(run: RunDir, cfg: RunConfig, subsets: list[Any], tables_step: str | None) -> str:
    """What a cached (row, seed) result depends on: the row's model/train/protocol settings, its test subsets and the
    step keys of the data and of the knowledge tables it reads (`tables_step`, the embed step that wrote them; None
    for a row without knowledge).

    Where it ran (train.device, threads) and progress bars are left out: a row trained on a GPU is the same row.
    """
    steps = run.manifest["steps"]
    section = {
        "model": cfg.model.model_dump(mode="json", exclude={"knowledge_tables", "inferred_table"}),
        "train": cfg.train.model_dump(mode="json", exclude={"seeds", "progress", "device", "num_threads"}),
        "protocol": cfg.protocol.ctr.model_dump(), "evaluate": cfg.evaluate.model_dump(), "subsets": subsets,
        "embed": steps.get(tables_step, {}).get("key") if tables_step else None,
        "gbr": steps.get("gbr", {}).get("key") if cfg.model.inferred_table else None,
        "data": steps.get("prepare", {}).get("key"),
    }
    return sha256_text(json.dumps(section, sort_keys=True, default=str))


def is_cached(path: Path, key: str) -> bool:
    """A finished result of the same row key (a result of other settings or knowledge is recomputed, never reused)."""
    if not path.is_file():
        return False
    if _read_json(path).get("row_key") == key:
        return True
    log.info("%s was made with other settings or inputs (or before results were keyed); recomputing it", path.name)
    return False


def _run_one(run_root: str, cfg_json: dict[str, Any], seed: int, sparse_history: int, long_tail: int, out: str, key: str) -> str:
    """One (row, seed): train, select on valid, score test and its subsets; the result JSON is written to `out`."""
    from reaseq.rank.ctr import run_ctr

    cfg = RunConfig.model_validate(cfg_json)
    folder = Path(run_root) / pipeline.DATA_DIR
    data, samples = load_prepared(folder), load_ctr_samples(folder / pipeline.CTR_SAMPLES_FILE)
    result = run_ctr(data, samples, cfg, seed, test_subsets=test_subsets(data, samples, sparse_history, long_tail))
    write_json(out, {**result, "row_key": key, "device": cfg.train.device})
    return out


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def knowledge_records(run: RunDir, records: Path | None) -> tuple[Path, str]:
    """The records RER encodes: the given file, else the run's knowledge step output, else the items' own metadata."""
    from reaseq.knowledge.records import write_jsonl
    from reaseq.knowledge.step import records_path
    from reaseq.represent.step import metadata_records

    if records is not None:
        return Path(records), str(records)
    if records_path(run).is_file():
        return records_path(run), "knowledge step records"
    log.info("ablate: the run has no knowledge records (run `reaseq knowledge` first for LLM knowledge); using the items' metadata")
    items = pl.read_parquet(run.root / pipeline.DATA_DIR / "items.parquet")
    return write_jsonl(run.root / ABLATION_DIR / "metadata.jsonl", metadata_records(items)), "item metadata (title, year, genres)"


def paired_gain(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of the seed-paired differences a - b, their sd, and whether the gain exceeds 2 sd of either row and of the pairs."""
    diff = mean_sd([x - y for x, y in zip(a, b)])
    spread = max(mean_sd(a)["sd"], mean_sd(b)["sd"], diff["sd"])
    return {"gain": diff["mean"], "paired_sd": diff["sd"], "exceeds_2sd": len(a) > 1 and diff["mean"] > 2 * spread}


def summarise(name: str, results: list[dict[str, Any]], cfg: RunConfig) -> dict[str, Any]:
    """One row: test metrics and subsets over seeds, valid AUC, the first seed's slices."""
    return {
        "name": name,
        "metrics": aggregate_runs([r["test"]["metrics"] for r in results]),
        "subsets": {s: aggregate_runs([r["test_subsets"][s]["metrics"] for r in results]) for s in results[0].get("test_subsets", {})},
        "valid": {m: [r["valid"]["metrics"][m] for r in results] for m in METRICS},
        "best_epochs": [r["best_epoch"] for r in results],
        "train_samples_per_s": sum(r["train_samples_per_s"] for r in results) / len(results),
        "wall_s": sum(r["wall_s"] for r in results),
        "slices": results[0]["test"]["slices"],
        "model": cfg.model.model_dump(mode="json", exclude={"knowledge_tables", "inferred_table"}),
    }


def gains_over(rows: dict[str, dict[str, Any]], base: str = "din") -> dict[str, Any]:
    """Paired gains of every row over `base` on all test samples and each subset, for AUC and GAUC."""
    out: dict[str, Any] = {}
    if base not in rows:
        return out
    for name, row in rows.items():
        if name == base:
            continue
        for subset in (None, *SUBSETS):
            for metric in ("auc", "gauc"):
                a = row["metrics"] if subset is None else row["subsets"].get(subset)
                b = rows[base]["metrics"] if subset is None else rows[base]["subsets"].get(subset)
                if a and b:
                    out[f"{name} vs {base} / {subset or 'all'} / {metric}"] = paired_gain(a[metric]["values"], b[metric]["values"])
    return out


def run_ablation(
    run: RunDir,
    rows: list[str] | None = None,
    seeds: list[int] | None = None,
    records: Path | None = None,
    jobs: int = 1,
    sparse_history: int = 50,
    long_tail: int = 100,
    force: bool = False,
) -> dict[str, Any]:
    """Prepare, build RER's tables and GBR's table, train every (row, seed), and write ablation.json and report.md."""
    cfg = run.config
    if cfg.protocol.name != "ctr" or cfg.model.name != "din":
        raise ConfigError(None, "model.name", "the ablation varies the DIN ranker of the ctr protocol", "use a ctr config with model.name: din")
    rows = rows or DEFAULT_ROWS
    seeds = seeds or cfg.train.seeds
    folder = run.root / ABLATION_DIR
    pipeline.prepare(run)
    needs_tables = any(ABLATION_ROWS[r].get("knowledge", "none") != "none" or ABLATION_ROWS[r].get("semantic_ids") for r in rows)
    needs_gbr = any(ABLATION_ROWS[r].get("inferred") for r in rows)
    source, tables = "none", None
    if needs_tables or needs_gbr:
        records_file, source = knowledge_records(run, records)
        tables = pipeline.embed(run, records_file, force=force)
    inferred = pipeline.gbr(run, force=force) if needs_gbr else None

    configs = {row: row_config(cfg, row, tables, inferred) for row in rows}
    keys = {row: row_key(run, configs[row], [sparse_history, long_tail], "embed" if configs[row].model.knowledge_tables else None) for row in rows}
    todo = [(row, seed) for row in rows for seed in seeds if force or not is_cached(folder / "rows" / f"{row}_seed{seed}.json", keys[row])]
    (folder / "rows").mkdir(parents=True, exist_ok=True)
    args = [(str(run.root), configs[row].model_dump(mode="json"), seed, sparse_history, long_tail, str(folder / "rows" / f"{row}_seed{seed}.json"), keys[row]) for row, seed in todo]
    if jobs > 1 and len(args) > 1:
        # Spawned workers: each trains one (row, seed) with its own torch threads (and CUDA context on a GPU).
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_run_one, *zip(*args)):
                log.info("ablate: wrote %s", done)
    else:
        for arg in args:
            log.info("ablate: wrote %s", _run_one(*arg))

    results = {row: [_read_json(folder / "rows" / f"{row}_seed{seed}.json") for seed in seeds] for row in rows}
    summary_rows = {row: summarise(row, results[row], configs[row]) for row in rows}
    gbr_summary = _read_json(run.root / "gbr" / "summary.json") if needs_gbr and (run.root / "gbr" / "summary.json").is_file() else None
    record = {
        "dataset": cfg.dataset.name,
        "protocol_text": pipeline.protocol_text(cfg),
        "seeds": seeds,
        "knowledge_source": source,
        "subsets": {"sparse_users": f"test samples with <= {sparse_history} earlier events", "long_tail": f"target items with <= {long_tail} training samples"},
        "tuning": "every row: the config's epochs, lr, batch size and patience; model selection on valid AUC only",
        "gbr": gbr_summary,
        "rows": list(summary_rows.values()),
        "gains": gains_over(summary_rows),
    }
    write_json(folder / "ablation.json", record)
    write_ablation_report(folder, record)
    return record


def ablation_table(record: dict[str, Any]) -> str:
    """Markdown: test AUC / GAUC / logloss and the subsets' AUC / GAUC of every row (mean ± sd over seeds)."""
    header = ["row", *METRICS, *[f"{s} {m}" for s in SUBSETS for m in ("auc", "gauc")]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in record["rows"]:
        cells = [row["name"], *[format_mean_sd(row["metrics"][m]) if m in row["metrics"] else "—" for m in METRICS]]
        cells += [format_mean_sd(row.get("subsets", {}).get(s, {}).get(m)) if row.get("subsets", {}).get(s) else "—" for s in SUBSETS for m in ("auc", "gauc")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_ablation_report(folder: Path, record: dict[str, Any]) -> Path:
    """report.md with the table, the gains over din, and a bar plot of AUC / GAUC per row (ablation.png)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = record["rows"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("auc", "gauc")):
        names = [r["name"] for r in rows if metric in r["metrics"]]
        means = [r["metrics"][metric]["mean"] for r in rows if metric in r["metrics"]]
        sds = [r["metrics"][metric]["sd"] for r in rows if metric in r["metrics"]]
        ax.bar(names, means, yerr=sds, capsize=3, color="#4c72b0")
        low = min(m - s for m, s in zip(means, sds)) if means else 0.0
        ax.set_ylim(low - 0.01, max(m + s for m, s in zip(means, sds)) + 0.005 if means else 1.0)
        ax.set_title(f"test {metric.upper()} (mean ± sd over seeds {record['seeds']})", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    figure.tight_layout()
    plot = folder / "ablation.png"
    tmp = plot.with_name(f".{plot.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(plot)
    gains = [f"- {k}: {v['gain']:+.4f} (paired sd {v['paired_sd']:.4f}){' — exceeds 2 sd' if v['exceeds_2sd'] else ''}" for k, v in record["gains"].items()]
    lines = [
        f"# Ablation: {record['dataset']} ctr", "", f"Protocol: {record['protocol_text']}", "",
        f"Knowledge source of RER: {record['knowledge_source']}. Tuning: {record['tuning']}.", "",
        ablation_table(record), "", "![AUC and GAUC per row](ablation.png)", "", "## Gains over din (paired by seed)", "", *gains, "",
    ]
    return write_text(folder / "report.md", "\n".join(lines))
