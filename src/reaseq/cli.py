"""The `reaseq` command line: thin wrappers over reaseq.pipeline."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

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

    run = _open_run(config, set_, run_dir)
    pipeline.prepare(run)
    summary = pipeline.train(run, force=force)
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
