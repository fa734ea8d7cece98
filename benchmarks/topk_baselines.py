"""Top-K baselines on one leave-one-out split: popularity, our SASRec, and RecBole 1.2.1's SASRec on the identical rows.

    python benchmarks/topk_baselines.py                     # ML-1M, writes results/ml-1m_topk_baselines.json
    python benchmarks/topk_baselines.py --skip-recbole
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, cached, finish, make_row, open_run, peer_parser, run_recbole, with_model  # noqa: E402

from reaseq import pipeline  # noqa: E402
from reaseq.data.export_recbole import export_topk  # noqa: E402
from reaseq.rank.topk import run_topk  # noqa: E402

METRICS = ["hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr@10"]
# RecBole's names for the same quantities (one target per row: Recall@K = Hit@K).
RECBOLE_NAMES = {"hr@10": "hit@10", "ndcg@10": "ndcg@10", "hr@20": "hit@20", "ndcg@20": "ndcg@20", "mrr@10": "mrr@10"}


def main() -> None:
    parser = peer_parser(__doc__.split("\n\n")[0], "ml-1m-topk.yaml", "topk", "~20 min per SASRec epoch")
    parser.add_argument("--recbole-batch-size", type=int, default=512, help="RecBole's benchmark 4096 leaves SASRec untrained on CPU (notes)")
    args = parser.parse_args()

    run = open_run(args.config, [*args.overrides, f"train.num_threads={args.threads}"], args.work_dir / "run")
    cfg = run.config
    _, _, split = pipeline.load_data(run)
    out = args.out or RESULTS / f"{cfg.dataset.name}_topk_baselines.json"
    rows_dir = args.work_dir / "rows"
    rows = []

    for model in ("popularity", "sasrec"):
        model_cfg = with_model(cfg, model)
        results = [cached(rows_dir / f"{model}_seed{seed}.json", lambda: run_topk(split, model_cfg, seed), args.force) for seed in args.seeds]
        rows.append(make_row(
            model, [r["test"]["metrics"] for r in results], [r["train_samples_per_s"] for r in results], [r["wall_s"] for r in results],
            best_epochs=[r["best_epoch"] for r in results], epochs_run=[r["epochs_run"] for r in results], slices=results[0]["test"]["slices"],
        ))
        print(f"{model}: test ndcg@10 {[round(r['test']['metrics']['ndcg@10'], 4) for r in results]}", file=sys.stderr)

    if not args.skip_recbole:
        name = f"{cfg.dataset.name}-topk"
        export_dir = args.work_dir / "recbole"
        if not (export_dir / name / f"{name}.test.inter").exists() or args.force:
            export_topk(split, cfg.protocol.topk.max_len, export_dir, name)
        per_seed, speeds, walls, runs = [], [], [], []
        for seed in args.recbole_seeds:
            extra = ["--threads", str(args.threads), "--time-budget-s", str(args.recbole_budget_s), "--batch-size", str(args.recbole_batch_size)]
            result = cached(rows_dir / f"recbole_sasrec_seed{seed}.json", lambda: run_recbole("SASRec", export_dir, name, seed, rows_dir / f"recbole_sasrec_seed{seed}.raw.json", extra), args.force)
            per_seed.append({ours: result["test"][theirs] for ours, theirs in RECBOLE_NAMES.items()})
            speeds.append(result["train_samples_per_s"])
            walls.append(result["wall_s"])
            runs.append({"epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"], "stop_reason": result["stop_reason"]})
        rows.append(make_row("recbole_sasrec", per_seed, speeds, walls, recbole_runs=runs, recbole_config=result["config"]))

    protocol = {"name": "topk", **cfg.protocol.topk.model_dump(), "text": pipeline.protocol_text(cfg), "threads": args.threads, "sasrec": cfg.model.model_dump(), "train": cfg.train.model_dump(exclude={"seeds", "progress"})}
    finish("topk_baselines", cfg, protocol, args.seeds, rows, METRICS, out, recbole_seeds=args.recbole_seeds)


if __name__ == "__main__":
    main()
