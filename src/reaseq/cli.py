"""The `reaseq` command line: thin wrappers over reaseq.pipeline."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from reaseq.ablation_rows import ABLATION_ROWS, DEFAULT_ROWS
from reaseq.config import RunConfig, load_config
from reaseq.errors import ReaSeqError

app = typer.Typer(help="ReaSeq, open: LLM world knowledge in a real-time sequential ranker.", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (see configs/). Defaults apply where omitted.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key, e.g. --set train.epochs=3 (repeatable).")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", "-r", help="Run directory (default: run_dir from the config).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Redo steps even if the manifest says they are up to date.")]


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time, so repeated in-process invocations keep logging."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _setup_logging() -> None:
    logger = logging.getLogger("reaseq")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)


def _open_run(config: Optional[Path], overrides: Optional[list[str]], run_dir: Optional[Path]):  # noqa: ANN202
    from reaseq.runs import RunDir

    cfg = load_config(config, overrides or [])
    if run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": run_dir})
    return RunDir(cfg.run_dir, cfg)


@contextmanager
def _prepared_on_every_rank(config: Optional[Path], overrides: Optional[list[str]], run_dir: Optional[Path], device_of: Callable[[RunConfig], str]):  # noqa: ANN202
    """(DDP context, prepared run) for a step every torchrun rank runs; a single process without torchrun.

    Rank 0 prepares the data while the others wait (two writers would race on data/), then every rank opens the
    run (reading its manifest) and only rank 0 keeps writing the run log; the process group is left at the end.
    """
    from reaseq import pipeline
    from reaseq.rank import distributed

    ctx = distributed.init_from_env(device_of(load_config(config, overrides or [])))
    try:
        if not ctx.is_main:
            distributed.barrier(ctx)
        run = _open_run(config, overrides, run_dir)
        if ctx.is_main:
            pipeline.prepare(run)
            distributed.barrier(ctx)
        distributed.log_on_main_only(ctx)
        yield ctx, run
    finally:
        distributed.cleanup()


def _guard(fn):  # noqa: ANN001, ANN202
    """Print ReaSeq errors as one clear line and exit 2 instead of a traceback."""

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except ReaSeqError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


@app.command()
@_guard
def prepare(config: ConfigOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, force: ForceOpt = False) -> None:
    """Load the dataset, write canonical Parquet tables, both protocol splits and the dataset card."""
    from reaseq import pipeline

    run = _open_run(config, set_, run_dir)
    out = pipeline.prepare(run, force=force)
    typer.echo(f"prepared data in {out} (card: {out / 'card.md'})")


@app.command()
@_guard
def train(config: ConfigOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, force: ForceOpt = False) -> None:
    """Train the configured model for each seed (prepares data first if needed); early stopping on validation."""
    from reaseq import pipeline
    from reaseq.evaluate.aggregate import format_mean_sd

    with _prepared_on_every_rank(config, set_, run_dir, lambda cfg: cfg.train.device) as (ctx, run):
        summary = pipeline.train(run, force=force)
    if not ctx.is_main:
        return
    for name, value in summary["test"].items():
        typer.echo(f"test {name}: {format_mean_sd(value)}")
    typer.echo(f"report: {run.root / 'report.md'}")


@app.command()
@_guard
def evaluate(config: ConfigOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None) -> None:
    """Re-score the test split with a run's saved checkpoints; writes evaluation.json and a report."""
    from reaseq import pipeline
    from reaseq.evaluate.aggregate import format_mean_sd

    run = _open_run(config, set_, run_dir)
    summary = pipeline.evaluate(run)
    for name, value in summary["test"].items():
        typer.echo(f"test {name}: {format_mean_sd(value)}")
    typer.echo(f"report: {run.root / 'evaluation' / 'report.md'}")


@app.command()
@_guard
def demo(run_dir: Annotated[Path, typer.Option(help="Where the demo writes its runs.")] = Path("runs/demo"), quick: Annotated[bool, typer.Option(help="Fewer epochs (used by the tests).")] = False) -> None:
    """Run the whole pipeline on the embedded default dataset (MovieLens-100K) and print where the report is."""
    from reaseq.demo import run_demo

    report = run_demo(run_dir, quick=quick)
    typer.echo(f"demo report: {report}")


@app.command()
@_guard
def knowledge(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    shard: Annotated[Optional[str], typer.Option(help="Generate only shard i/n of the catalogue (e.g. 0/4), for several machines or processes.")] = None,
    regenerate: Annotated[bool, typer.Option("--regenerate", help="Ask the model again for every call (the cache is rewritten, not read).")] = False,
    workers: Annotated[int, typer.Option(help="Split the catalogue over N worker processes (one shard each), then merge their records.")] = 0,
    worker_backend: Annotated[str, typer.Option(help="'process' (this machine) or 'ray' (pip install ray; run folder on shared storage).")] = "process",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster to join with --worker-backend ray (e.g. auto).")] = None,
) -> None:
    """Run the knowledge agents (planner, analysts, critic, writer) over the catalogue, or import knowledge (knowledge.source=import)."""
    from reaseq import pipeline
    from reaseq.knowledge.accounting import Accounting, items_line

    if workers:
        from reaseq.errors import ConfigError
        from reaseq.knowledge.workers import run_sharded

        if shard:
            raise ConfigError(None, "--shard", "--shard and --workers were both given", "use --workers N alone: it runs shards 0/N .. N-1/N itself")
        if worker_backend not in ("process", "ray"):
            raise ConfigError(None, "--worker-backend", f"unknown worker backend '{worker_backend}'", "use 'process' or 'ray'")
        records = run_sharded(config, set_ or [], run_dir, workers, backend=worker_backend, regenerate=regenerate, ray_address=ray_address)  # type: ignore[arg-type]
        outcome = Accounting()
        outcome.add_records(records)
        typer.echo(f"knowledge: {items_line(outcome.to_dict())}, from {workers} workers")
        typer.echo(f"records: {Path(run_dir or load_config(config, set_ or []).run_dir) / 'knowledge' / 'knowledge.jsonl'}")
        return
    from reaseq.knowledge.step import output_dir, run_knowledge

    run = _open_run(config, set_, run_dir)
    pipeline.prepare(run)
    summary = run_knowledge(run, shard=shard, regenerate=regenerate)
    typer.echo(f"knowledge: {items_line(summary)}, in {summary['wall_seconds']:.1f}s")
    typer.echo(f"records: {output_dir(run, shard or run.config.knowledge.shard)}")


@app.command()
@_guard
def embed(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    records: Annotated[Optional[Path], typer.Option(help="Knowledge records (JSONL); default: the knowledge step's output.")] = None,
) -> None:
    """Encode, align and quantise knowledge records into RER's tables (knowledge vectors, gate, semantic IDs)."""
    from reaseq import pipeline

    run = _open_run(config, set_, run_dir)
    pipeline.prepare(run)
    typer.echo(f"tables: {pipeline.embed(run, records, force=force)}")


@app.command()
@_guard
def gbr(config: ConfigOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, force: ForceOpt = False) -> None:
    """Train GBR (the masked diffusion model) on early training behaviour and write each user's inferred behaviours."""
    from reaseq import pipeline

    with _prepared_on_every_rank(config, set_, run_dir, lambda cfg: cfg.gbr.device) as (ctx, run):
        path = pipeline.gbr(run, force=force)
    if ctx.is_main:
        typer.echo(f"inferred behaviours: {path}")


@app.command()
@_guard
def ablate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    rows: Annotated[Optional[list[str]], typer.Option("--row", help=f"Ablation row (repeatable): {', '.join(ABLATION_ROWS)}. Default: {', '.join(DEFAULT_ROWS)}.")] = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="Seed (repeatable); default: train.seeds of the config.")] = None,
    records: Annotated[Optional[Path], typer.Option(help="Knowledge records (JSONL) for RER; default: the knowledge step's output, else the items' metadata.")] = None,
    jobs: Annotated[int, typer.Option(help="(row, seed) trainings run in parallel processes; set train.num_threads so that jobs x threads <= cores.")] = 1,
) -> None:
    """Run the ReaSeq ablation (din, din_rer, din_gbr, reaseq, kar) over seeds; write ablation.json, report.md and a plot."""
    from reaseq.ablate import ablation_table, run_ablation

    run = _open_run(config, set_, run_dir)
    record = run_ablation(run, rows, seeds, records, jobs=jobs, force=force)
    typer.echo(ablation_table(record))
    typer.echo(f"report: {run.root / 'ablation' / 'report.md'}")


@app.command("knowledge-merge")
@_guard
def knowledge_merge(
    shard_dirs: Annotated[list[Path], typer.Argument(help="Shard folders written by `reaseq knowledge --shard i/n` (knowledge/shards/<i>-of-<n>).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    cache: Annotated[Optional[list[Path]], typer.Option(help="Cache folders of other machines to merge into this run's cache (repeatable).")] = None,
) -> None:
    """Join shard outputs into the run's knowledge records (and shard caches into its cache)."""
    from reaseq.knowledge.step import merge_shards, records_path

    run = _open_run(config, set_, run_dir)
    records = merge_shards(run, shard_dirs, cache or [])
    typer.echo(f"merged {len(records)} records into {records_path(run)}")


@app.command("knowledge-pack")
@_guard
def knowledge_pack(
    out: Annotated[Path, typer.Option(help="Pack file to write (.jsonl.gz); a .manifest.json is written beside it.")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    exclude_pack: Annotated[Optional[list[str]], typer.Option(help="Leave out the entries of this pack (repeatable; 'reaseq:<path>' = shipped); replaying needs both.")] = None,
) -> None:
    """Pack a run's LLM-call cache into one file that other runs replay (knowledge.cache.seed_packs)."""
    from reaseq.knowledge.step import pack_cache

    run = _open_run(config, set_, run_dir)
    manifest = pack_cache(run, out, exclude_pack or [])
    typer.echo(f"packed {manifest['entries']} cache entries (run records: {manifest['items_ok']} items ok) into {out}")


@app.command()
@_guard
def serve(
    run_dir: Annotated[Path, typer.Option("--run-dir", "-r", help="A trained ctr/din run folder.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    seed: Annotated[Optional[int], typer.Option(help="Which train/seed<N>/model.pt (default: first seed).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads its own model).")] = 1,
) -> None:
    """Serve a trained ranker over HTTP: POST /score, GET /healthz, GET /readyz, POST /admin/reload."""
    from reaseq.serve.app import serve as run_server
    from reaseq.serve.config import ServeConfig

    run_server(run_dir, ServeConfig(host=host, port=port, seed=seed, workers=workers))


@app.command("export-onnx")
@_guard
def export_onnx(
    run_dir: Annotated[Path, typer.Option("--run-dir", "-r", help="A trained ctr/din run folder.")],
    out: Annotated[Optional[Path], typer.Option(help="Output file (default: <run-dir>/ranker.onnx).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Which seed's checkpoint.")] = None,
) -> None:
    """Export a run's trained ranker to ONNX, checked against eager scores."""
    from reaseq.serve.export import export_run

    typer.echo(f"wrote {export_run(run_dir, out or run_dir / 'ranker.onnx', seed)}")


@app.command("export-recbole")
@_guard
def export_recbole(config: ConfigOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None, out: Annotated[Path, typer.Option(help="Folder for the RecBole benchmark files.")] = Path("runs/recbole")) -> None:
    """Export the run's exact ctr and topk splits as RecBole pre-split benchmark files."""
    from reaseq import pipeline
    from reaseq.data.export_recbole import export_ctr, export_topk

    run = _open_run(config, set_, run_dir)
    pipeline.prepare(run)
    data, ctr, topk = pipeline.load_data(run)
    name = run.config.dataset.name
    paths = export_ctr(data, ctr, run.config.protocol.ctr.max_len, out, f"{name}-ctr") + export_topk(topk, run.config.protocol.topk.max_len, out, f"{name}-topk")
    typer.echo("\n".join(str(p) for p in paths))


@app.command("config-schema")
def config_schema() -> None:
    """Print every config key with its type and default (JSON schema)."""
    typer.echo(json.dumps(RunConfig.model_json_schema(), indent=2))


if __name__ == "__main__":
    app()
