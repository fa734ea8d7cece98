"""The full ReaSeq ablation on MovieLens `ctr`: din, din_rer, din_gbr, reaseq (both paths), kar, din_text, and RecBole's DIN.

    python benchmarks/ablation.py                                  # ML-1M, 3 seeds -> results/ml-1m_ctr_ablation.json
    python benchmarks/ablation.py --set train.device=cuda --set gbr.device=cuda --jobs 12   # the same on a GPU
    python benchmarks/ablation.py --config configs/ml-100k.yaml --run-dir runs/abl-100k

Our rows come from `reaseq ablate` (reaseq.ablate.run_ablation; each (row, seed) is cached in <run>/ablation/rows,
so a run made elsewhere, e.g. on a GPU machine, is re-read, not recomputed). The RecBole DIN row is the peer run of
benchmarks/ctr_baselines.py on the same exported split, re-scored by our evaluator (it needs `make recbole`);
it is skipped with a message when that run is absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, finish, make_row  # noqa: E402

from reaseq import pipeline  # noqa: E402
from reaseq.ablate import METRICS, run_ablation  # noqa: E402
from reaseq.ablation_rows import ABLATION_ROWS, DEFAULT_ROWS  # noqa: E402
from reaseq.config import load_config  # noqa: E402
from reaseq.evaluate.metrics import ctr_metrics  # noqa: E402
from reaseq.runs import RunDir  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml-1m-ctr.yaml")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "abl-1m")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every row, e.g. train.epochs=3")
    parser.add_argument("--rows", nargs="+", choices=list(ABLATION_ROWS), default=[*DEFAULT_ROWS, "din_text"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024, 2025, 2026])
    parser.add_argument("--jobs", type=int, default=1, help="(row, seed) trainings in parallel processes")
    parser.add_argument("--records", type=Path, default=None, help="knowledge records for RER (default: the run's, else item metadata)")
    parser.add_argument("--recbole-rows", type=Path, default=ROOT / "runs" / "bench" / "ctr" / "rows", help="where benchmarks/ctr_baselines.py cached its RecBole DIN run")
    parser.add_argument("--hardware", default="", help="where the rows were trained (recorded in the JSON), e.g. when they were computed on another machine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    return parser.parse_args()


def recbole_row(folder: Path) -> dict[str, Any] | None:
    """RecBole's DIN on the same split, its test predictions re-scored by our evaluator; None when it was not run."""
    runs = sorted(folder.glob("recbole_din_seed*.json")) if folder.is_dir() else []
    runs = [p for p in runs if not p.name.endswith(".raw.json") and p.with_suffix(".npz").is_file()]
    if not runs:
        print(f"recbole_din: no peer run in {folder} (run `make recbole` and benchmarks/ctr_baselines.py first); row skipped", file=sys.stderr)
        return None
    per_seed, speeds, walls, seeds = [], [], [], []
    for path in runs:
        result = json.loads(path.read_text(encoding="utf-8"))
        scored = np.load(path.with_suffix(".npz"))
        per_seed.append(ctr_metrics(scored["user"], scored["label"], scored["score"]))
        speeds.append(result["train_samples_per_s"])
        walls.append(result["wall_s"])
        seeds.append(int(path.stem.removeprefix("recbole_din_seed")))
    return make_row("recbole_din", per_seed, speeds, walls, seeds=seeds, note="RecBole 1.2.1 DIN from benchmarks/ctr_baselines.py (same split, CPU, time-budgeted); its seeds only")


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config, [*args.overrides, f"run_dir={args.run_dir}", "train.progress=false"])
    run = RunDir(cfg.run_dir, cfg)
    record = run_ablation(run, args.rows, args.seeds, args.records, jobs=args.jobs, force=args.force)
    rows = list(record["rows"])
    peer = recbole_row(args.recbole_rows) if cfg.dataset.name == "ml-1m" else None
    if peer is not None:
        rows.append(peer)
    protocol = {
        "name": "ctr", **cfg.protocol.ctr.model_dump(), "text": pipeline.protocol_text(cfg), "subsets": record["subsets"],
        "train": cfg.train.model_dump(exclude={"seeds", "progress"}), "gbr": cfg.gbr.model_dump(), "tuning": record["tuning"],
        "knowledge_source": record["knowledge_source"], "hardware": args.hardware or f"train.device={cfg.train.device}, this machine",
        "best_epochs_note": "best epoch per seed is in each row; every row gets the config's epochs and patience",
    }
    out = args.out or RESULTS / f"{cfg.dataset.name}_ctr_ablation.json"
    report = out.with_suffix(".md")
    finish("ctr_ablation", cfg, protocol, args.seeds, rows, METRICS, out, gains=record["gains"], gbr=record["gbr"], report=str(report.relative_to(ROOT)) if report.is_relative_to(ROOT) else str(report))
    # The run's report and plot travel with the JSON (the run folder is not versioned).
    plot = out.with_suffix(".png")
    shutil.copyfile(run.root / "ablation" / "ablation.png", plot)
    text = (run.root / "ablation" / "report.md").read_text(encoding="utf-8").replace("(ablation.png)", f"({plot.name})")
    report.write_text(text + f"\nHardware: {protocol['hardware']}.\n", encoding="utf-8")
    for key, value in record["gains"].items():
        if key.endswith("/ auc") or key.endswith("/ gauc"):
            print(f"{key}: {value['gain']:+.4f} (paired sd {value['paired_sd']:.4f}){' > 2 sd' if value['exceeds_2sd'] else ''}")


if __name__ == "__main__":
    main()
