"""CTR baselines on one split: popularity, our DIN, and RecBole 1.2.1's DIN on the identical exported samples.

    python benchmarks/ctr_baselines.py                      # ML-1M, 3 seeds, writes results/ml-1m_ctr_baselines.json
    python benchmarks/ctr_baselines.py --skip-recbole       # without the peer
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cached, finish, make_row, open_run, peer_parser, run_recbole, with_model  # noqa: E402

from reaseq import pipeline  # noqa: E402
from reaseq.data.export_recbole import export_ctr  # noqa: E402
from reaseq.evaluate.metrics import ctr_metrics  # noqa: E402
from reaseq.rank.ctr import run_ctr  # noqa: E402

METRICS = ["auc", "gauc", "logloss"]


def main() -> None:
    parser = peer_parser(__doc__.split("\n\n")[0], "ml-1m-ctr.yaml", "ctr", "~6 min per DIN epoch")
    args = parser.parse_args()

    run = open_run(args.config, [*args.overrides, f"train.num_threads={args.threads}"], args.work_dir / "run")
    cfg = run.config
    data, samples, _ = pipeline.load_data(run)
    out = args.out or RESULTS / f"{cfg.dataset.name}_ctr_baselines.json"
    rows_dir = args.work_dir / "rows"
    rows = []

    for model in ("popularity", "din"):
        model_cfg = with_model(cfg, model)
        results = [cached(rows_dir / f"{model}_seed{seed}.json", lambda: run_ctr(data, samples, model_cfg, seed), args.force) for seed in args.seeds]
        rows.append(make_row(
            model, [r["test"]["metrics"] for r in results], [r["train_samples_per_s"] for r in results], [r["wall_s"] for r in results],
            best_epochs=[r["best_epoch"] for r in results], valid={m: [r["valid"]["metrics"][m] for r in results] for m in METRICS},
            slices=results[0]["test"]["slices"],
        ))
        print(f"{model}: test auc {[round(r['test']['metrics']['auc'], 4) for r in results]}", file=sys.stderr)

    if not args.skip_recbole:
        name = f"{cfg.dataset.name}-ctr"
        export_dir = args.work_dir / "recbole"
        if not (export_dir / name / f"{name}.test.inter").exists() or args.force:
            export_ctr(data, samples, cfg.protocol.ctr.max_len, export_dir, name)
        per_seed, speeds, walls, native = [], [], [], []
        for seed in args.recbole_seeds:
            preds = rows_dir / f"recbole_din_seed{seed}.npz"
            extra = ["--threads", str(args.threads), "--time-budget-s", str(args.recbole_budget_s), "--predictions", str(preds)]
            result = cached(rows_dir / f"recbole_din_seed{seed}.json", lambda: run_recbole("DIN", export_dir, name, seed, rows_dir / f"recbole_din_seed{seed}.raw.json", extra), args.force)
            scored = np.load(preds)
            # GAUC is not a RecBole metric: score RecBole's own test predictions with our evaluator.
            metrics = ctr_metrics(scored["user"], scored["label"], scored["score"])
            per_seed.append(metrics)
            speeds.append(result["train_samples_per_s"])
            walls.append(result["wall_s"])
            native.append({"auc": result["test"]["auc"], "logloss": result["test"]["logloss"], "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"], "stop_reason": result["stop_reason"]})
        rows.append(make_row("recbole_din", per_seed, speeds, walls, recbole_reported=native, recbole_config=result["config"]))

    din = next(r for r in rows if r["name"] == "din")
    ratios = {}
    peer = next((r for r in rows if r["name"] == "recbole_din"), None)
    if peer:
        ratios = {"din_vs_recbole_din_samples_per_s": din["train_samples_per_s"] / peer["train_samples_per_s"]}
    protocol = {"name": "ctr", **cfg.protocol.ctr.model_dump(), "text": pipeline.protocol_text(cfg), "threads": args.threads, "din": cfg.model.model_dump(), "train": cfg.train.model_dump(exclude={"seeds", "progress"})}
    finish("ctr_baselines", cfg, protocol, args.seeds, rows, METRICS, out, ratios=ratios, recbole_seeds=args.recbole_seeds)
    if ratios:
        print(f"DIN train samples/s: ours / RecBole = {ratios['din_vs_recbole_din_samples_per_s']:.2f}x")


if __name__ == "__main__":
    main()
