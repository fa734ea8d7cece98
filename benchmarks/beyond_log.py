"""Beyond-log benchmark: infer target users' hidden off-platform behaviour with GBR, popularity, item-kNN, EASE and an autoregressive SASRec.

    python benchmarks/beyond_log.py                          # ML-1M, writes results/ml-1m_beyond_log.json
    python benchmarks/beyond_log.py --budget-s 60 --seeds 1  # a quicker look
    python benchmarks/beyond_log.py --select loss            # rounds chosen on held-out training loss, as before

GBR and SASRec get the same training time budget on the same visible corpus; every generator must
return K off-platform items the user has not seen. See docs/protocols.md for the protocol.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, cached, finish, make_row, open_run

from reaseq import pipeline
from reaseq.config import parse_overrides
from reaseq.data.dataset import load_prepared
from reaseq.errors import ReaSeqError
from reaseq.gbr.baselines import (
    ease_lists,
    generate_autoregressive,
    itemknn_lists,
    popularity_lists,
    select_ease_l2,
    train_sasrec_generator,
)
from reaseq.gbr.beyond_log import (
    BeyondLogSplit,
    build_beyond_log,
    evaluate_lists,
    validation_split,
)
from reaseq.gbr.config import BeyondLogConfig, GBRConfig
from reaseq.gbr.infer import generation_quality, infer, quality_vs_steps
from reaseq.gbr.train import collaborative_init, train_gbr
from reaseq.io import sha256_text

# GBR settings of this benchmark (any GBRConfig field can be overridden with --gbr key=value).
# max_len 200 with context "all": the history is read in full, in pieces of 180 items (a quarter of target users
# have more than 138 on-platform events); ema_decay 0.999: selection and inference use the weights' moving average.
# docs/protocols.md has the measured effect of each.
BENCH_GBR: dict[str, Any] = {"max_len": 200, "context": "all", "ema_decay": 0.999, "batch_size": 32, "lr": 0.002, "loss_weight": "none", "response_frac": 0.5, "steps": 1, "patience": 5, "epochs": 1000}
EVAL_EVERY_WINDOWS = 4000  # training windows between validation checks, for both GBR and SASRec
ROWS = ("gbr", "popularity", "autoregressive", "itemknn", "ease")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "ml-1m-topk.yaml", help="dataset + SASRec settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="run config override, e.g. model.dropout=0.1")
    parser.add_argument("--gbr", action="append", default=[], help="GBR config override, e.g. --gbr lr=0.003")
    parser.add_argument("--protocol", action="append", default=[], help="BeyondLogConfig override, e.g. --protocol 'off_platform_genres=[Horror]'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2024], help="model seeds (the target users stay fixed)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training seconds for GBR and for SASRec each")
    parser.add_argument("--steps-grid", type=int, nargs="+", default=[1, 2, 5, 10], help="unmasking rounds for the quality-vs-steps curve; GBR's row uses the one with the best recall on the validation users (with --select recall)")
    parser.add_argument("--sasrec-init", choices=["random", "svd"], default="random", help="SASRec item embeddings: its own random start, or GBR's SVD start")
    parser.add_argument("--sasrec-response-frac", type=float, default=None, help="share of SASRec's training windows rewritten as prompt/response rows (on-platform items, then off-platform), as GBR trains; default: GBR's response_frac (0.5); 0: plain next-item windows, as before 2026-11-28")
    parser.add_argument("--sasrec-max-len", type=int, default=None, help="history items SASRec reads (default: the config's protocol.topk.max_len, 50 on ML-1M; 200 did worse there, see docs/protocols.md)")
    parser.add_argument("--ease-l2", type=float, nargs="+", default=[100.0, 300.0, 1000.0, 3000.0, 10000.0], help="EASE l2 grid, chosen on world users held out as validation targets")
    parser.add_argument("--valid-frac", type=float, default=0.1, help="share of all users, drawn among world users, that play targets for model selection (EASE's l2; GBR's and SASRec's round with --select recall)")
    parser.add_argument("--select", choices=["recall", "loss"], default="recall",
                        help="GBR's and SASRec's round: best recall@K on the world users playing targets (they then train without those users' off-platform events), or lowest held-out training loss")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the results in docs/protocols.md used 2, on 2 cores)")
    parser.add_argument("--device", default="cpu", help="where GBR and SASRec train and infer, e.g. cuda")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "bench" / "beyond_log")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="recompute rows cached in --work-dir")
    parser.add_argument("--rows", nargs="*", choices=ROWS, default=list(ROWS),
                        help="generators to compute in this process (none: only assemble); the others are only read from --work-dir's cache, so several processes "
                             "(e.g. on one GPU) can share the work; the results file is written once every row is there")
    parser.add_argument("--compute-only", action="store_true", help="compute the --rows into the cache and stop, never writing the results file (for parallel workers)")
    return parser.parse_args()


def timed(fn: Any) -> tuple[Any, float]:
    tick = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - tick


def run_counting(name: str, data: Any, split: BeyondLogSplit, k: int) -> dict[str, Any]:
    """Popularity or item-kNN: no training pass, no seed."""
    make = popularity_lists if name == "popularity" else itemknn_lists
    (items, _), seconds = timed(lambda: make(data, split.visible_rows, split.histories, split.allowed, k))
    return {"metrics": {**evaluate_lists(items, split, k), **generation_quality(items, split.histories, split.allowed, data.n_items)}, "wall_s": seconds, "samples_per_s": 0.0}


Selection = tuple[Any, BeyondLogSplit] | None  # (visible corpus as data, the split of world users playing targets), or None: select on loss


def selection_recall(generate: Any, selection: tuple[Any, BeyondLogSplit], k: int) -> float:
    """recall@k of `generate(histories, allowed)`'s lists on the world users playing targets."""
    _, inner = selection
    return evaluate_lists(generate(inner.histories, inner.allowed), inner, k)[f"recall@{k}"]


def run_ease(data: Any, split: BeyondLogSplit, protocol_cfg: BeyondLogConfig, grid: list[float], valid_frac: float) -> dict[str, Any]:
    """EASE, a strong non-sequential reference: l2 picked on world users playing targets, then refitted on the whole visible corpus."""
    started = time.perf_counter()
    l2, valid_recall = select_ease_l2(data, split, protocol_cfg, grid, valid_frac)
    items, _ = ease_lists(data, split.visible_rows, split.histories, split.allowed, protocol_cfg.k, l2)
    metrics = {**evaluate_lists(items, split, protocol_cfg.k), **generation_quality(items, split.histories, split.allowed, data.n_items)}
    return {"metrics": metrics, "wall_s": time.perf_counter() - started, "samples_per_s": 0.0, "l2": l2, "valid_recall": {str(k): v for k, v in valid_recall.items()}}


def run_gbr(data: Any, split: BeyondLogSplit, cfg: GBRConfig, k: int, steps_grid: list[int], selection: Selection) -> dict[str, Any]:
    """Train GBR on the visible corpus, generate K off-platform items per target, and sweep the number of rounds."""
    started = time.perf_counter()

    def valid_recall(model: Any, steps: int) -> float:
        lists = lambda histories, allowed: infer(model, histories, k, steps, allowed, batch_size=cfg.infer_batch_size, seed=cfg.seed, context=cfg.context)[0]
        return selection_recall(lists, selection, k)

    if selection is None:
        model, record = train_gbr(data, split.visible_rows, cfg, response_items=split.off_platform, eval_every=EVAL_EVERY_WINDOWS)
    else:
        visible, inner = selection
        model, record = train_gbr(visible, inner.visible_rows, cfg, response_items=inner.off_platform, eval_every=EVAL_EVERY_WINDOWS, select=lambda m: valid_recall(m, cfg.steps))
    model.to(cfg.device)  # train_gbr hands the weights back on CPU; the benchmark's lists are inferred where it trained
    grid = sorted(set(steps_grid) | {cfg.steps})
    steps, steps_valid = cfg.steps, {}
    if selection is not None:
        # The number of unmasking rounds is an inference setting: chosen on the world users playing targets, like the round.
        steps_valid = {s: valid_recall(model, s) for s in grid}
        steps = max(grid, key=lambda s: (steps_valid[s], -s))
    score = lambda items: evaluate_lists(items, split, k)
    curve = quality_vs_steps(model, split.histories, k, grid, score, split.allowed, remasking=cfg.remasking, temperature=cfg.temperature, batch_size=cfg.infer_batch_size, seed=cfg.seed, context=cfg.context)
    chosen = next(row for row in curve if row["steps"] == steps)
    metrics = {key: chosen[key] for key in (f"recall@{k}", f"ndcg@{k}", f"precision@{k}", "n", "validity", "duplicate_rate", "novelty", "mean_confidence")}
    return {
        "metrics": metrics, "quality_vs_steps": curve, "samples_per_s": record.tokens_per_s, "wall_s": time.perf_counter() - started,
        "train_s": record.wall_s, "best_round": record.fit.best_epoch, "rounds_run": record.fit.epochs_run, "valid_curve": record.curves.get("valid_loss", record.curves.get("valid_score")),
        "train_tokens_per_pass": record.train_tokens, "infer_s": chosen["infer_s"], "steps": steps, "steps_valid_recall": {str(s): v for s, v in steps_valid.items()},
    }


def run_sasrec(data: Any, split: BeyondLogSplit, run_cfg: Any, gbr_cfg: GBRConfig, budget_s: float, seed: int, init: str, k: int, selection: Selection, max_len: int, steps_grid: list[int], response_frac: float) -> dict[str, Any]:
    """Train SASRec on the visible corpus within the same budget and generate K items in rounds, chosen like GBR's."""
    started = time.perf_counter()
    train_cfg = run_cfg.train.model_copy(update={"time_budget_s": budget_s, "epochs": gbr_cfg.epochs})
    corpus, rows, select, response = data, split.visible_rows, None, split.off_platform
    # Like GBR's: rounds of 1 (plain top-K) up to K (greedy, one item at a time), the round picked with GBR's steps.
    grid = sorted({s for s in steps_grid if s <= k} | {gbr_cfg.steps, k})
    lists = lambda g, steps: (lambda histories, allowed: generate_autoregressive(g, histories, k, allowed, steps=steps)[0])
    if selection is not None:
        corpus, rows, response = selection[0], selection[1].visible_rows, selection[1].off_platform
        select = lambda g: selection_recall(lists(g, gbr_cfg.steps), selection, k)
    init_vectors = collaborative_init(corpus, rows, run_cfg.model.embedding_dim, seed) if init == "svd" else None
    generator = train_sasrec_generator(corpus, rows, run_cfg.model, train_cfg, max_len, seed, gbr_cfg.valid_user_frac, EVAL_EVERY_WINDOWS, init_vectors, select, response, response_frac)
    steps, steps_valid = k, {}
    if selection is not None:
        steps_valid = {s: selection_recall(lists(generator, s), selection, k) for s in grid}
        steps = max(grid, key=lambda s: (steps_valid[s], -s))
    curve = []
    for s in grid:
        (items, confidence), infer_s = timed(lambda: generate_autoregressive(generator, split.histories, k, split.allowed, steps=s))
        curve.append({"steps": s, **evaluate_lists(items, split, k), **generation_quality(items, split.histories, split.allowed, data.n_items), "mean_confidence": float(confidence.mean()), "infer_s": infer_s})
    chosen = next(row for row in curve if row["steps"] == steps)
    metrics = {key: chosen[key] for key in (f"recall@{k}", f"ndcg@{k}", f"precision@{k}", "n", "validity", "duplicate_rate", "novelty", "mean_confidence")}
    return {
        "metrics": metrics, "samples_per_s": generator.fit.train_samples_per_s, "wall_s": time.perf_counter() - started, "train_s": generator.wall_s,
        "best_round": generator.fit.best_epoch, "rounds_run": generator.fit.epochs_run, "valid_curve": [v if selection else -v for v in generator.fit.curves["valid"]], "infer_s": chosen["infer_s"],
        "quality_vs_steps": curve, "steps": steps, "steps_valid_recall": {str(s): v for s, v in steps_valid.items()},
    }


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    try:
        run = open_run(args.config, [f"train.device={args.device}", *args.overrides, f"train.num_threads={args.threads}"], args.work_dir / "run")
    except ReaSeqError as exc:
        raise SystemExit(f"beyond-log benchmark skipped: the dataset is unavailable ({exc})") from None
    run_cfg = run.config
    data = load_prepared(run.root / pipeline.DATA_DIR)
    protocol_cfg = BeyondLogConfig.model_validate(parse_overrides(args.protocol))
    k = protocol_cfg.k
    base_gbr = {**BENCH_GBR, "k": k, "time_budget_s": args.budget_s, "num_threads": args.threads, "device": args.device, **parse_overrides(args.gbr)}
    split = build_beyond_log(data, protocol_cfg)
    out = args.out or RESULTS / f"{run_cfg.dataset.name}_beyond_log.json"
    # Each row is cached under a key of exactly the settings that change it, so a changed setting is never served
    # stale, and changing GBR's settings does not recompute EASE or SASRec.
    gbr_defaults = GBRConfig.model_validate(base_gbr)
    sasrec_max_len = args.sasrec_max_len or run_cfg.protocol.topk.max_len
    sasrec_response_frac = gbr_defaults.response_frac if args.sasrec_response_frac is None else args.sasrec_response_frac
    split_key = {"data": run.manifest["steps"]["prepare"]["key"], "protocol": protocol_cfg.model_dump()}
    common = {**split_key, "valid_frac": args.valid_frac, "select": args.select}
    keys = {
        "popularity": split_key,
        "itemknn": split_key,
        "ease": {**common, "ease_l2": args.ease_l2},
        "gbr": {**common, "gbr": gbr_defaults.model_dump(exclude={"seed"}), "steps": args.steps_grid},
        "autoregressive": {**common, "budget_s": args.budget_s, "sasrec_init": args.sasrec_init, "sasrec_max_len": sasrec_max_len, "sasrec_response_frac": sasrec_response_frac, "model": run_cfg.model.model_dump(),
                           "train": run_cfg.train.model_dump(exclude={"progress", "seeds"}), "topk": run_cfg.protocol.topk.model_dump(),
                           "gbr": {f: getattr(gbr_defaults, f) for f in ("epochs", "valid_user_frac", "steps")}, "steps": args.steps_grid},
    }
    rows_dir = args.work_dir / "rows"

    def row(name: str, compute: Any, seed: int | None = None) -> dict[str, Any] | None:
        path = rows_dir / f"{name}-{sha256_text(json.dumps(keys[name], sort_keys=True, default=str))[:12]}" / (f"seed{seed}.json" if seed is not None else "row.json")
        if name in args.rows:
            return cached(path, compute, args.force)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    print(f"{len(split.target_users)} target users, {int(split.off_platform.sum())} off-platform items, {int(split.visible_rows.sum())} visible events", file=sys.stderr)
    selection = validation_split(data, split, protocol_cfg, args.valid_frac) if args.select == "recall" else None
    found: dict[str, list[dict[str, Any] | None]] = {name: [] for name in ROWS}
    for name in ("popularity", "itemknn"):
        found[name].append(row(name, partial(run_counting, name, data, split, k)))
    found["ease"].append(row("ease", partial(run_ease, data, split, protocol_cfg, args.ease_l2, args.valid_frac)))
    for seed in args.seeds:
        gbr_cfg = GBRConfig.model_validate({**base_gbr, "seed": seed})
        found["gbr"].append(row("gbr", partial(run_gbr, data, split, gbr_cfg, k, args.steps_grid, selection), seed))
        found["autoregressive"].append(row("autoregressive", partial(run_sasrec, data, split, run_cfg, gbr_cfg, args.budget_s, seed, args.sasrec_init, k, selection, sasrec_max_len, args.steps_grid, sasrec_response_frac), seed))
        for name in ("gbr", "autoregressive"):
            if found[name][-1] is not None:
                print(f"seed {seed}: {name} recall@{k} {found[name][-1]['metrics'][f'recall@{k}']:.4f}", file=sys.stderr)
    if args.compute_only:
        return
    missing = sorted(name for name, per_seed in found.items() if any(r is None for r in per_seed))
    if missing:
        print(f"rows {missing} are not in {rows_dir} yet (another process computes them): no results file written; rerun with all rows to assemble it", file=sys.stderr)
        return
    results: dict[str, list[dict[str, Any]]] = {name: [r for r in per_seed if r is not None] for name, per_seed in found.items()}

    rows = []
    for name, per_seed in results.items():
        extra: dict[str, Any] = {}
        if name in ("gbr", "autoregressive"):
            extra = {key: [r[key] for r in per_seed] for key in ("train_s", "best_round", "rounds_run", "infer_s", "steps", "steps_valid_recall")}
            extra["quality_vs_steps"] = per_seed[0]["quality_vs_steps"]
        if name == "gbr":
            extra["config"] = GBRConfig.model_validate({**base_gbr, "seed": args.seeds[0]}).model_dump()
        if name == "ease":
            extra = {"l2": per_seed[0]["l2"], "valid_recall": per_seed[0]["valid_recall"]}
        if name == "autoregressive":
            extra["config"] = {"model": run_cfg.model.model_dump(), "train": run_cfg.train.model_dump(exclude={"seeds", "progress"}), "max_len": sasrec_max_len, "init": args.sasrec_init, "response_frac": sasrec_response_frac}
        rows.append(make_row(name, [r["metrics"] for r in per_seed], [r["samples_per_s"] for r in per_seed], [r["wall_s"] for r in per_seed], **extra))

    mean = {row["name"]: row["metrics"][f"recall@{k}"]["mean"] for row in rows}
    targets = {
        "gbr_over_popularity": mean["gbr"] / mean["popularity"],
        "gbr_at_least_1.5x_popularity": mean["gbr"] >= 1.5 * mean["popularity"],
        "gbr_above_autoregressive": mean["gbr"] > mean["autoregressive"],
        "gbr_all_valid": next(r for r in rows if r["name"] == "gbr")["metrics"]["validity"]["mean"] == 1.0,
    }
    hidden_sizes = np.array([len(h) for h in split.hidden])
    protocol = {
        "name": "beyond_log", **protocol_cfg.model_dump(),
        "text": (
            f"beyond-log: items with any genre in {protocol_cfg.off_platform_genres} are off platform; {len(split.target_users)} target users "
            f"({protocol_cfg.target_user_frac:.0%} of users, seed {protocol_cfg.seed}) keep only on-platform events visible; world users keep all. "
            f"From a target's on-platform sequence, generate {k} unseen off-platform items; recall@{k} = hits / min({k}, |hidden|), NDCG@{k} binary; "
            f"candidates = all {int(split.off_platform.sum())} off-platform items. GBR and SASRec ({sasrec_response_frac:.0%} of its windows as prompt/response rows, like GBR's {gbr_defaults.response_frac:.0%}) train {args.budget_s:.0f} s each (GBR on {gbr_defaults.device}, SASRec on {run_cfg.train.device}, {args.threads} CPU thread(s)), "
            + (f"keeping the round with the best recall@{k} on {len(selection[1].target_users)} world users playing targets (their off-platform events "
               f"hidden from training too; rounds scored with {gbr_defaults.steps} decoding round(s)); GBR's unmasking rounds chosen from {sorted(set(args.steps_grid) | {gbr_defaults.steps})} "
               f"and SASRec's decoding rounds (each appends its share of the K items, best first, to the history) from {sorted({s for s in args.steps_grid if s <= k} | {gbr_defaults.steps, k})} on the same users; "
               if selection is not None else f"keeping the round with the lowest held-out users' training loss; GBR unmasks in {gbr_defaults.steps} round(s); ")
            + f"EASE's l2 chosen from {args.ease_l2} on the same world users, then refitted on the whole visible corpus."
        ),
        "n_target_users": len(split.target_users), "n_off_platform_items": int(split.off_platform.sum()), "visible_events": int(split.visible_rows.sum()),
        "hidden_per_target": {"median": float(np.median(hidden_sizes)), "mean": float(hidden_sizes.mean())},
        "budget_s": args.budget_s, "threads": args.threads, "device": {"gbr": gbr_defaults.device, "autoregressive": run_cfg.train.device}, "steps_grid": args.steps_grid,
    }
    finish("beyond_log", run_cfg, protocol, args.seeds, rows, [f"recall@{k}", f"ndcg@{k}", "validity", "duplicate_rate", "novelty"], out, targets=targets)
    print(f"GBR recall@{k} = {targets['gbr_over_popularity']:.2f} x popularity; above autoregressive: {targets['gbr_above_autoregressive']}")


if __name__ == "__main__":
    main()
