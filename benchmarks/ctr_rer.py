"""RER in the ranker on MovieLens `ctr`: DIN vs DIN + raw text vs KAR-style adaptor vs DIN + RER, per knowledge source,
with sparse-user / long-tail subsets and a cold-start experiment (10% of the items never trained).

    python benchmarks/ctr_rer.py --dataset ml-100k                 # all rows, 3 seeds, results/ml-100k_ctr_rer.json
    python benchmarks/ctr_rer.py --dataset ml-1m --seeds 2024      # the real benchmark, one seed
    python benchmarks/ctr_rer.py --llm-records runs/x/knowledge/records.jsonl   # adds the `llm` knowledge source
    python benchmarks/ctr_rer.py --dataset ml-1m --jobs 3                       # rows in 3 processes at once
    python benchmarks/ctr_rer.py --dataset ml-1m --tables-only                  # tables here, rows to plan.json ...
    python benchmarks/ctr_rer.py --dataset ml-1m --train-plan --jobs 16 --set train.device=cuda   # ... trained on a GPU

Knowledge sources: `metadata` (the items' title, year and genres as text), `llm` (records of the knowledge step; items
without an ok record fall back to their metadata unless --llm-only), `llm_meta` (the same records, each answer after
its item's metadata: title and year kept, the catalogue's genres over the model's),
`agent4rec` (Agent4Rec's LLM-written movie summaries) and `tml1m` (plot, director and cast of the ML-1M movies);
the last two are read from --reference-dir and matched to our item ids by title (reported), never copied here.
Every row trains with the config's epochs / lr / patience (an equal tuning budget) and selects on valid AUC.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, make_row, open_run  # noqa: E402

from reaseq import pipeline  # noqa: E402
from reaseq.ablate import is_cached, row_key, test_subsets  # noqa: E402
from reaseq.config import RunConfig, with_overrides  # noqa: E402
from reaseq.data.cold import cold_split  # noqa: E402
from reaseq.data.dataset import load_prepared  # noqa: E402
from reaseq.data.protocols import TEST, load_ctr_samples  # noqa: E402
from reaseq.evaluate.aggregate import aggregate_runs, format_mean_sd, mean_sd  # noqa: E402
from reaseq.evaluate.results import MISSING, markdown_grid  # noqa: E402
from reaseq.evaluate.slices import POPULARITY_SLICE  # noqa: E402
from reaseq.io import write_json, write_with  # noqa: E402
from reaseq.knowledge.config import ImportConfig  # noqa: E402
from reaseq.knowledge.importer import import_knowledge  # noqa: E402
from reaseq.knowledge.records import KnowledgeRecord, read_jsonl, write_jsonl  # noqa: E402
from reaseq.rank.ctr import run_ctr  # noqa: E402
from reaseq.represent.step import metadata_records, run_embed, with_metadata_fallback  # noqa: E402
from reaseq.represent.tables import load_tables  # noqa: E402

METRICS = ["auc", "gauc", "logloss"]
CONFIGS = {"ml-100k": "ml-100k.yaml", "ml-1m": "ml-1m-ctr.yaml"}
SOURCES = ["metadata", "llm", "llm_meta", "agent4rec", "tml1m"]
# Row name -> ModelConfig fields on top of the base DIN.
VARIANTS: dict[str, dict[str, Any]] = {
    "din": {},
    "din_text": {"knowledge": "text"},
    "kar": {"knowledge": "kar"},
    "din_rer": {"knowledge": "aligned", "semantic_ids": True},
}
COLD_VARIANTS = ["din", "din_text", "kar", "din_rer"]
PLAN_FILE = "plan.json"
BUCKET_PREFIX = "item_popularity="  # gain(): a target-item popularity bucket instead of a test subset
AGENT4REC_FILE = "agent4rec_movies_augmentation.csv"
TML1M_FILE = "tml1m_movies.csv"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="ml-100k")
    parser.add_argument("--config", type=Path, default=None, help="default: configs/<the dataset's config>")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every row, e.g. train.epochs=3")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per row")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once, each in its own spawned process (with --set train.device=cuda they share the GPU)")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=SOURCES)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--llm-records", type=Path, default=None, help="knowledge records (JSONL) of the knowledge step")
    parser.add_argument("--llm-only", action="store_true", help="the llm source without the metadata fallback: items without an ok record get no knowledge")
    parser.add_argument("--reference-dir", type=Path, default=ROOT.parent / "shared" / "data" / "ml-1m", help=f"folder of {AGENT4REC_FILE} and {TML1M_FILE}")
    parser.add_argument("--rer-set", action="append", default=[], help="extra override for din_rer rows only, e.g. model.fine_tune_projection=true")
    parser.add_argument("--tag", default="", help="suffix of the din_rer row names and cache files (for variants made with --rer-set)")
    parser.add_argument("--sparse-history", type=int, default=50, help="sparse-user subset: test samples with at most this many earlier events")
    parser.add_argument("--long-tail", type=int, default=100, help="long-tail subset: target items with at most this many training samples")
    parser.add_argument("--min-bucket-samples", type=int, default=1000, help="paired gains per target-item popularity bucket only for buckets with at least this many test samples")
    parser.add_argument("--cold-sources", nargs="*", choices=SOURCES, default=["metadata"], help="sources of the cold-start experiment (none: skip it)")
    parser.add_argument("--cold-frac", type=float, default=0.1)
    parser.add_argument("--cold-seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="recompute rows cached in --work-dir")
    parser.add_argument("--tables-only", action="store_true", help=f"build every source's knowledge tables, write the rows still to train to <work-dir>/{PLAN_FILE} and stop")
    parser.add_argument("--train-plan", action="store_true", help=f"only train the rows of <work-dir>/{PLAN_FILE} (on another machine: carry the work dir's plan, run/data and the tables it names)")
    parser.add_argument("--hardware", default="", help="where the cached rows were trained, when not here (recorded in the JSON)")
    return parser.parse_args()


# --- knowledge sources ------------------------------------------------------------------------------


def write_csv(path: Path, frame: pl.DataFrame) -> Path:
    """A CSV written atomically."""
    return write_with(path, lambda tmp: frame.write_csv(tmp))


def import_reference(frame: pl.DataFrame, text_columns: list[str], name: str, our_ids: set[str], folder: Path) -> tuple[Path, dict[str, int]]:
    """Records of a reference table keyed by our item ids (rows of other titles dropped and counted), via the importer."""
    matched = frame.filter(pl.col("item_id").is_in(list(our_ids))).unique("item_id", keep="first", maintain_order=True)
    csv = write_csv(folder / f"{name}.csv", matched.select("item_id", *text_columns))
    records = import_knowledge(ImportConfig(path=csv, text_columns=text_columns, source_name=name), known_item_ids=our_ids)
    path = write_jsonl(folder / f"{name}.jsonl", records)
    counts = {"reference_rows": frame.height, "matched_items": matched.height, "catalogue": len(our_ids), "ok_records": sum(r.status == "ok" for r in records)}
    return path, counts


def source_records(source: str, items: pl.DataFrame, args: argparse.Namespace, folder: Path) -> tuple[Path | None, dict[str, Any]]:
    """The records file of one knowledge source and how it matched the catalogue; (None, reason) where it is absent."""
    our_ids = set(items["item_id"].to_list())
    if source == "metadata":
        records = metadata_records(items)
        return write_jsonl(folder / "metadata.jsonl", records), {"catalogue": len(our_ids), "ok_records": sum(r.status == "ok" for r in records)}
    if source in ("llm", "llm_meta"):
        if args.llm_records is None or not args.llm_records.is_file():
            return None, {"skipped": f"no --llm-records file ({args.llm_records})"}
        llm = read_jsonl(args.llm_records, KnowledgeRecord)
        if args.llm_only and source == "llm":
            return args.llm_records, {"path": str(args.llm_records), "catalogue": len(our_ids), "ok_records": sum(r.status == "ok" for r in llm)}
        # A partly generated catalogue (or items the model failed on) falls back to the items' metadata, as the demo
        # does; llm_meta also keeps the metadata in front of every answer (with_metadata_fallback's keep_metadata).
        merged, counts = with_metadata_fallback(llm, items, keep_metadata=source == "llm_meta")
        file = "llm_with_metadata.jsonl" if source == "llm" else "llm_metadata_first.jsonl"
        return write_jsonl(folder / file, merged), {"path": str(args.llm_records), "catalogue": len(our_ids), **counts}
    agent4rec = args.reference_dir / AGENT4REC_FILE
    if not agent4rec.is_file():
        return None, {"skipped": f"{agent4rec} is absent"}
    # All columns as text: the file's rating column holds some refusals written by the LLM.
    a4r = pl.read_csv(agent4rec, infer_schema=False)
    if source == "agent4rec":
        # Its `title` is our item id ("Toy Story (1995)"), except for ~50 titles whose accents are corrupted.
        frame = a4r.select(pl.col("title").alias("item_id"), "title", "summary")
        return import_reference(frame, ["title", "summary"], source, our_ids, folder)
    tml = args.reference_dir / TML1M_FILE
    if not tml.is_file():
        return None, {"skipped": f"{tml} is absent"}
    # tml1m's MovieID k is the k-th smallest ML-1M movie id: map it to a title through Agent4Rec's sorted ids.
    titles = a4r.select(pl.col("movie_id").cast(pl.Int64), "title").sort("movie_id").with_row_index("k", offset=1)
    frame = pl.read_csv(tml, infer_schema=False).with_columns(pl.col("MovieID").cast(pl.Int64))
    frame = frame.join(titles.select(pl.col("k").cast(pl.Int64), pl.col("title").alias("item_id")), left_on="MovieID", right_on="k")
    frame = frame.rename({"Plot": "plot", "Director": "director", "Cast": "cast"}).with_columns(pl.col("item_id").alias("title"))
    return import_reference(frame, ["title", "plot", "director", "cast"], source, our_ids, folder)


# --- rows -------------------------------------------------------------------------------------------


def variant_config(cfg: RunConfig, variant: str, rer_overrides: list[str]) -> RunConfig:
    """The base config with one variant's model fields (and, for din_rer, the extra overrides)."""
    fields = dict(VARIANTS[variant])
    if variant == "din_rer":
        for item in rer_overrides:
            key, value = item.split("=", 1)
            if not key.startswith("model."):
                raise SystemExit(f"--rer-set takes model.* overrides, got {item}")
            fields[key.removeprefix("model.")] = {"true": True, "false": False}.get(value.lower(), value)
    model = cfg.model.model_validate({**cfg.model.model_dump(), **fields})
    return cfg.model_copy(update={"model": model})


def popularity_buckets(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Test AUC / GAUC per target-item popularity bucket (training samples of the target), over seeds.

    A bucket whose metric is undefined in some seed (one class only) is left out of that metric.
    """
    per_bucket: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for bucket in result["test"]["slices"][POPULARITY_SLICE]:
            per_bucket.setdefault(bucket["bucket"], []).append({"count": bucket["count"], **bucket["metrics"]})
    out: dict[str, dict[str, Any]] = {}
    for name, seeds in per_bucket.items():
        if len(seeds) != len(results):
            continue
        out[name] = {"count": seeds[0]["count"]}
        for metric in ("auc", "gauc"):
            if all(s.get(metric) is not None for s in seeds):
                out[name][metric] = mean_sd([s[metric] for s in seeds])
    return out


def summarise_row(name: str, results: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One benchmark row: test metrics over seeds, valid AUC, subsets and popularity buckets over seeds, curves, slices."""
    subsets = {}
    for subset in results[0].get("test_subsets", {}):
        subsets[subset] = aggregate_runs([r["test_subsets"][subset]["metrics"] for r in results])
    return make_row(
        name, [r["test"]["metrics"] for r in results], [r["train_samples_per_s"] for r in results], [r["wall_s"] for r in results],
        best_epochs=[r["best_epoch"] for r in results], epochs_run=[r["epochs_run"] for r in results],
        valid={m: [r["valid"]["metrics"][m] for r in results] for m in METRICS}, valid_curves=[r["curves"]["valid"] for r in results],
        subsets=subsets, popularity_buckets=popularity_buckets(results), slices=results[0]["test"]["slices"], **extra,
    )


def gain(rows: dict[str, dict[str, Any]], better: str, base: str, subset: str | None, metric: str) -> dict[str, Any] | None:
    """Mean gain of `better` over `base` (paired by seed) and whether it exceeds 2 sd (of either row and of the pairs).

    `subset`: None (the whole test split), a test subset's name, or BUCKET_PREFIX + an item-popularity bucket.
    """
    if better not in rows or base not in rows:
        return None

    def values(row: dict[str, Any]) -> list[float]:
        if subset is None:
            block = row["metrics"]
        elif subset.startswith(BUCKET_PREFIX):
            block = row.get("popularity_buckets", {}).get(subset.removeprefix(BUCKET_PREFIX))
        else:
            block = row["subsets"].get(subset)
        return block[metric]["values"] if block and metric in block else []

    a, b = values(rows[better]), values(rows[base])
    if not a or len(a) != len(b):
        return None
    diff = mean_sd([x - y for x, y in zip(a, b)])
    spread = max(mean_sd(a)["sd"], mean_sd(b)["sd"], diff["sd"])
    return {"gain": diff["mean"], "paired_sd": diff["sd"], "row_sd": max(mean_sd(a)["sd"], mean_sd(b)["sd"]), "exceeds_2sd": len(a) > 1 and diff["mean"] > 2 * spread}


@dataclass(frozen=True)
class RowTask:
    """One (row, seed) to train: its variant's config, its knowledge tables and whether it is a cold-start row."""

    out: Path  # the cached result file
    cfg_json: dict[str, Any]
    tables: Path | None
    seed: int
    cold: bool
    key: str  # what the result depends on (settings, data, knowledge tables): a file of another key is retrained


def train_row(run_root: Path, task: RowTask, args: argparse.Namespace) -> Path:
    """Train one (row, seed) and write its result (a top-level function, so spawned workers can run it)."""
    cfg = RunConfig.model_validate(task.cfg_json)
    folder = run_root / pipeline.DATA_DIR
    data, samples = load_prepared(folder), load_ctr_samples(folder / pipeline.CTR_SAMPLES_FILE)
    tables = load_tables(task.tables) if task.tables is not None else None
    if task.cold:
        # Cold start: a seeded share of the items never trained (targets dropped, masked from training histories,
        # count 0 for RER's gate); scored on the test samples whose target is one of them.
        split = cold_split(data, samples, args.cold_frac, args.cold_seed)
        subsets = {"cold": split.test_mask(), "warm": (split.samples.split == TEST) & ~split.eval_mask}
        result = run_ctr(data, split.samples, cfg, task.seed, tables=tables, test_subsets=subsets, train_hidden_items=split.cold_items)
    else:
        result = run_ctr(data, samples, cfg, task.seed, tables=tables, test_subsets=test_subsets(data, samples, args.sparse_history, args.long_tail))
    write_json(task.out, {**result, "row_key": task.key, "device": cfg.train.device})
    return task.out


def pending(tasks: list[RowTask], force: bool) -> list[RowTask]:
    """The tasks without a result of the same key yet (all of them with --force)."""
    return [t for t in tasks if force or not is_cached(t.out, t.key)]


def train_rows(run_root: Path, tasks: list[RowTask], args: argparse.Namespace) -> None:
    """Train the rows not cached yet (all of them with --force), `--jobs` at a time."""
    todo = pending(tasks, args.force)
    for task in tasks:
        if task not in todo:
            print(f"  reusing {task.out}", file=sys.stderr)
    if args.jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(train_row, [run_root] * len(todo), todo, [args] * len(todo)):
                print(f"  wrote {done}", file=sys.stderr)
    else:
        for task in todo:
            print(f"  wrote {train_row(run_root, task, args)}", file=sys.stderr)


def write_plan(work: Path, run_root: Path, tasks: list[RowTask], args: argparse.Namespace) -> Path:
    """The rows still to train, with paths relative to the work dir, so that another machine can train them."""
    todo = pending(tasks, args.force)
    rel = lambda path: str(Path(path).relative_to(work))  # noqa: E731
    plan = {
        "run_root": rel(run_root),
        "settings": {k: vars(args)[k] for k in ("cold_frac", "cold_seed", "sparse_history", "long_tail")},
        "tasks": [{"out": rel(t.out), "cfg": t.cfg_json, "tables": rel(t.tables) if t.tables else None, "seed": t.seed, "cold": t.cold, "key": t.key} for t in todo],
    }
    return write_json(work / PLAN_FILE, plan)


def train_plan(work: Path, args: argparse.Namespace) -> None:
    """Train the rows of a plan written by --tables-only (no data preparation or encoding needed here)."""
    path = work / PLAN_FILE
    if not path.is_file():
        raise SystemExit(f"{path} not found: write it with --tables-only first")
    plan = json.loads(path.read_text(encoding="utf-8"))
    for key, value in plan["settings"].items():
        setattr(args, key, value)
    # --set applies here too, meant for where a row runs (train.device=cuda on the GPU machine): a setting that changes
    # the model or training would make a row differ from the one its file name stands for.
    extra = [*args.overrides, f"train.num_threads={args.threads}"]
    tasks = [
        RowTask(work / t["out"], with_overrides(RunConfig.model_validate(t["cfg"]), extra).model_dump(mode="json"), work / t["tables"] if t["tables"] else None, t["seed"], t["cold"], t["key"])
        for t in plan["tasks"]
    ]
    for task in tasks:
        task.out.parent.mkdir(parents=True, exist_ok=True)
    train_rows(work / plan["run_root"], tasks, args)


def main() -> None:
    args = parse_args()
    config = args.config or ROOT / "configs" / CONFIGS[args.dataset]
    work = args.work_dir or ROOT / "runs" / "bench" / f"ctr_rer_{args.dataset}"
    if args.train_plan:
        train_plan(work, args)
        return
    quiet = [f"represent.{part}.progress=false" for part in ("encoder", "align", "semantic_ids")]
    # Each source decides its own texts (`llm` the answers alone, `llm_meta` after the metadata): the config's
    # keep_metadata must not merge them again.
    quiet.append("represent.keep_metadata=false")
    run = open_run(config, [*quiet, *args.overrides, f"train.num_threads={args.threads}"], work / "run")
    cfg = run.config
    data, samples, _ = pipeline.load_data(run)
    items = pl.read_parquet(run.root / "data" / "items.parquet")
    rows_dir, sources_dir = work / "rows", work / "sources"
    rows_dir.mkdir(parents=True, exist_ok=True)
    tag = f"_{args.tag}" if args.tag else ""

    # Every row of the report: (name, tasks over seeds, variant config, source). Tables are built first, in this
    # process (the embed steps write the run's manifest); then the rows train, in parallel with --jobs.
    planned: list[tuple[str, list[RowTask], RunConfig, str | None, bool]] = []

    def plan(variants: list[str], source: str | None, tables: Path | None, cold: bool, prefix: str = "", tables_step: str | None = None) -> None:
        subsets = ["cold", args.cold_frac, args.cold_seed] if cold else [args.sparse_history, args.long_tail]
        for variant in variants:
            row_cfg = variant_config(cfg, variant, args.rer_set)
            row_tables, row_tables_step = (None, None) if variant == "din" else (tables, tables_step)
            key = row_key(run, row_cfg, subsets, row_tables_step)
            suffix = tag if variant == "din_rer" else ""
            name = f"{prefix}{variant}{suffix}" + (f"[{source}]" if source and variant != "din" else "")
            file_stem = f"{prefix}{variant}{suffix}" + (f"_{source}" if source and variant != "din" else "")
            tasks = [RowTask(rows_dir / f"{file_stem}_seed{seed}.json", row_cfg.model_dump(mode="json"), row_tables, seed, cold, key) for seed in args.seeds]
            planned.append((name, tasks, row_cfg, source, cold))

    # Main experiment: din once, then the knowledge rows of every available source.
    matches: dict[str, Any] = {}
    if "din" in args.variants:
        plan(["din"], None, None, cold=False)
    knowledge_variants = [v for v in args.variants if v != "din"]
    sources_records: dict[str, Path] = {}
    for source in args.sources:
        records, info = source_records(source, items, args, sources_dir)
        matches[source] = info
        if records is None:
            print(f"source {source}: skipped ({info['skipped']})", file=sys.stderr)
            continue
        print(f"source {source}: {info}", file=sys.stderr)
        tables_path = run_embed(run, records, name=source)
        sources_records[source] = records
        info["embed"] = run.manifest["steps"][f"embed_{source}"]["metrics"]
        plan(knowledge_variants, source, tables_path, cold=False, tables_step=f"embed_{source}")

    # Cold start: tables whose collaborative side and gate never saw the cold items.
    cold_info: dict[str, Any] = {}
    if args.cold_sources:
        split = cold_split(data, samples, args.cold_frac, args.cold_seed)
        cold_info = {"cold_items": len(split.cold_items), "frac": args.cold_frac, "seed": args.cold_seed, "cold_test_samples": int(split.test_mask().sum()),
                     "dropped_train_samples": int(len(samples) - len(split.samples))}
        prefix = f"cold{int(round(args.cold_frac * 100))}_"
        plan(["din"], None, None, cold=True, prefix=prefix)
        for source in args.cold_sources:
            if source not in sources_records:
                continue
            tables_path = run_embed(run, sources_records[source], name=f"{source}_cold", exclude_items=split.cold_items)
            plan([v for v in COLD_VARIANTS if v != "din"], source, tables_path, cold=True, prefix=prefix, tables_step=f"embed_{source}_cold")

    tasks = [task for _, row_tasks, *_ in planned for task in row_tasks]
    if args.tables_only:
        plan_path = write_plan(work, run.root, tasks, args)
        print(f"tables built in {run.root / 'embed'}; the rows still to train are listed in {plan_path}", file=sys.stderr)
        return
    train_rows(run.root, tasks, args)
    rows: list[dict[str, Any]] = []
    cold_rows: list[dict[str, Any]] = []
    for name, tasks, row_cfg, source, cold in planned:
        results = [json.loads(task.out.read_text(encoding="utf-8")) for task in tasks]
        row = summarise_row(name, results, source=source, model=row_cfg.model.model_dump(mode="json", exclude={"knowledge_tables"}))
        (cold_rows if cold else rows).append(row)
        print(f"{name}: test auc {[round(r['test']['metrics']['auc'], 4) for r in results]}", file=sys.stderr)

    by_name = {row["name"]: row for row in rows + cold_rows}
    gains: dict[str, Any] = {}
    for source in sources_records:
        rer = f"din_rer{tag}[{source}]"
        # Paired gains only for buckets with enough test samples: a GAUC over a few dozen samples is noise.
        buckets = [BUCKET_PREFIX + b for b, block in by_name.get(rer, {}).get("popularity_buckets", {}).items() if block["count"] >= args.min_bucket_samples]
        for base in ("din", f"din_text[{source}]", f"kar[{source}]"):
            for subset in (None, "sparse_users", "long_tail", *buckets):
                for metric in ("auc", "gauc"):
                    result = gain(by_name, rer, base, subset, metric)
                    if result is not None:
                        gains[f"{rer} vs {base} / {subset or 'all'} / {metric}"] = result
        cold_prefix = f"cold{int(round(args.cold_frac * 100))}_"
        for base in (f"{cold_prefix}din", f"{cold_prefix}din_text[{source}]", f"{cold_prefix}kar[{source}]"):
            for metric in ("auc", "gauc"):
                result = gain(by_name, f"{cold_prefix}din_rer{tag}[{source}]", base, "cold", metric)
                if result is not None:
                    gains[f"{cold_prefix}din_rer{tag}[{source}] vs {base} / cold / {metric}"] = result

    out = args.out or RESULTS / f"{cfg.dataset.name}_ctr_rer{tag}.json"
    protocol = {
        "name": "ctr", **cfg.protocol.ctr.model_dump(), "text": pipeline.protocol_text(cfg), "threads": args.threads,
        "din": cfg.model.model_dump(mode="json"), "train": cfg.train.model_dump(exclude={"seeds", "progress"}),
        "represent": cfg.represent.model_dump(mode="json"), "rer_overrides": args.rer_set,
        "subsets": {"sparse_users": f"test samples with <= {args.sparse_history} earlier events", "long_tail": f"target items with <= {args.long_tail} training samples"},
        "popularity_buckets": "test samples by their target item's training samples (the item_popularity slice's edges), over seeds; "
                              f"paired gains only for buckets with >= {args.min_bucket_samples} test samples",
        "cold_start": {**cold_info, "text": "a seeded share of the items is held out: their training samples are dropped, they are masked out of training histories "
                       "and excluded from RER's collaborative side and gate (count 0); 'cold' = test samples whose target is held out, 'warm' = the other test samples"},
        "tuning": "every row: the config's epochs, lr, batch size and patience; model selection on valid AUC",
        "hardware": args.hardware or f"this machine, {args.threads} thread(s)",
    }
    finish("ctr_rer", cfg, protocol, args.seeds, rows + cold_rows, METRICS, out, sources=matches, gains=gains)
    print(subset_table(rows + cold_rows))
    print(bucket_table(rows))
    for key, value in gains.items():
        print(f"{key}: {value['gain']:+.4f} (paired sd {value['paired_sd']:.4f}, row sd {value['row_sd']:.4f}){' > 2 sd' if value['exceeds_2sd'] else ''}")


def subset_table(rows: list[dict[str, Any]]) -> str:
    """AUC / GAUC of every row on its subsets (sparse users, long tail, cold, warm)."""
    names = sorted({s for row in rows for s in row.get("subsets", {})})
    header = ["model", *[f"{s} {m}" for s in names for m in ("auc", "gauc")]]
    table = []
    for row in rows:
        cells = [row["name"]]
        for s in names:
            block = row.get("subsets", {}).get(s)
            cells += [format_mean_sd(block[m]) if block else MISSING for m in ("auc", "gauc")]
        table.append(cells)
    return "\n" + markdown_grid(header, table)


def bucket_table(rows: list[dict[str, Any]]) -> str:
    """Test AUC of every row per target-item popularity bucket (training samples of the target), mean over seeds."""
    counts = {b: block["count"] for row in rows for b, block in row.get("popularity_buckets", {}).items()}
    header = ["model", *[f"{b} ({n:,}) auc" for b, n in counts.items()]]
    table = []
    for row in rows:
        blocks = row.get("popularity_buckets", {})
        table.append([row["name"], *[f"{blocks[b]['auc']['mean']:.4f}" if "auc" in blocks.get(b, {}) else MISSING for b in counts]])
    return "\nTarget-item popularity buckets (training samples of the target; test samples in brackets):\n" + markdown_grid(header, table)


if __name__ == "__main__":
    main()
