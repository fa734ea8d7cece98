"""Training throughput of DIN and the RER ranker on ML-1M `ctr`: each distinct item of a batch encoded once
(`ItemEncoder.lookup`, the default) against every target and history slot encoded on its own.

    python benchmarks/train_speed.py [--batches 40] [--rounds 3] [--threads 2]

Both paths train the same model from the same weights on the same shuffled batches; they alternate in blocks
of --batches (after --warmup batches), so machine noise hits both. samples/s = batch samples / (gather + forward
+ backward + optimizer step). RER tables come from the items' metadata (sentence vectors cached after the first run).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, make_row, open_run  # noqa: E402

from reaseq import pipeline  # noqa: E402
from reaseq.data.batches import CTRBatcher  # noqa: E402
from reaseq.data.protocols import TRAIN  # noqa: E402
from reaseq.rank.models.din import build_din  # noqa: E402
from reaseq.knowledge.records import write_jsonl  # noqa: E402
from reaseq.represent.step import metadata_records, run_embed  # noqa: E402
from reaseq.represent.tables import load_tables  # noqa: E402

ROWS = {"din": {}, "din_rer": {"knowledge": "aligned", "semantic_ids": True}}


def time_block(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[dict[str, torch.Tensor]], n: int) -> tuple[float, int]:
    """Seconds and samples of n training steps."""
    loss_fn, seconds, samples = nn.BCEWithLogitsLoss(), 0.0, 0
    for _ in range(n):
        start = time.perf_counter()
        batch = next(batches)
        loss = loss_fn(model(batch), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        samples += len(batch["label"])
    return seconds, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml-1m-ctr.yaml")
    parser.add_argument("--batches", type=int, default=40, help="training steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="blocks per path, alternating")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / "train_speed")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet = [f"represent.{part}.progress=false" for part in ("encoder", "align", "semantic_ids")]
    run = open_run(args.config, quiet, args.work_dir / "run")
    cfg = run.config
    data, samples, _ = pipeline.load_data(run)
    records = write_jsonl(run.root / "metadata.jsonl", metadata_records(pl.read_parquet(run.root / "data" / "items.parquet")))
    tables = load_tables(run_embed(run, records, name="metadata"))
    train = samples.of(TRAIN)
    rows = []
    for name, fields in ROWS.items():
        model_cfg = cfg.model.model_validate({**cfg.model.model_dump(), **fields})
        torch.manual_seed(0)
        base = build_din(data, model_cfg, tables if fields else None)
        models = {"per_slot": base, "dedup": copy.deepcopy(base)}
        models["per_slot"].item_encoder.dedupe_lookups = False
        optimizers = {k: torch.optim.Adam(m.parameters(), lr=cfg.train.lr) for k, m in models.items()}
        batcher = CTRBatcher(data, cfg.protocol.ctr.max_len)
        streams = {k: batcher.iterate(train, cfg.train.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)) for k in models}
        totals = {k: [0.0, 0] for k in models}
        for key, model in models.items():
            model.train()
            time_block(model, optimizers[key], streams[key], args.warmup)
        for _ in range(args.rounds):
            for key, model in models.items():
                seconds, n = time_block(model, optimizers[key], streams[key], args.batches)
                totals[key][0] += seconds
                totals[key][1] += n
        speed = {k: n / s for k, (s, n) in totals.items()}
        for key in models:
            rows.append(make_row(f"{name}/{key}", [{"samples_per_s": speed[key], "speedup": speed[key] / speed["per_slot"]}], [speed[key]], [totals[key][0]]))
        print(f"{name}: per-slot {speed['per_slot']:,.0f} samples/s, dedup {speed['dedup']:,.0f} samples/s ({speed['dedup'] / speed['per_slot']:.2f}x)", file=sys.stderr)
    protocol = {
        "text": f"{pipeline.protocol_text(cfg)} Training steps of batch {cfg.train.batch_size} over the train samples, "
                f"{args.rounds} alternating blocks of {args.batches} steps per path after {args.warmup} warm-up steps; {args.threads} torch thread(s).",
        "threads": args.threads, "batches": args.batches, "rounds": args.rounds,
    }
    finish("train_speed", cfg, protocol, [0], rows, ["samples_per_s", "speedup"], args.out or RESULTS / f"{cfg.dataset.name}_train_speed.json")


if __name__ == "__main__":
    main()
