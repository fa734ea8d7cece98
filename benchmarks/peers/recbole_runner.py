#!/usr/bin/env python
"""Run RecBole 1.2.1's DIN or SASRec on a split exported by reaseq (peer benchmark).

Run it with the peer environment built by ``setup_recbole.sh``::

    .venv-recbole/bin/python benchmarks/peers/recbole_runner.py \
        --data-dir D --dataset NAME --model {DIN,SASRec} --seed S --out result.json

``D/NAME/`` must hold RecBole "benchmark" files ``NAME.train.inter``, ``NAME.valid.inter`` and
``NAME.test.inter`` (and optionally ``NAME.item`` / ``NAME.user`` for DIN). Each row is one sample:

* SASRec: ``user_id:token  item_id_list:token_seq  item_id:token``
* DIN:    ``user_id:token  item_id_list:token_seq  item_id:token  label:float``

with the history oldest -> newest, space separated, at most 50 items. RecBole reads the three
files as they are (no filtering, no re-splitting, no sequence augmentation).

The epoch loop is our own, around RecBole's ``Trainer._train_epoch`` / ``Trainer._valid_epoch``,
so that only the training pass is timed, early stopping uses ``--patience`` on the validation
metric, and a wall-clock budget can cut training. The best-on-validation weights are kept in
memory and used for the single test evaluation. Only RecBole's ``config``, ``data``, ``model``,
``trainer`` and ``utils`` packages are imported, never ``recbole.quick_start`` (it imports ray).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings

MAX_ITEM_LIST_LENGTH = 50
SPLITS = ("train", "valid", "test")

# Side-feature columns DIN may use, loaded only when present in the file headers.
DIN_ITEM_COLS = ("genre", "release_year")
DIN_USER_COLS = ("age", "gender", "occupation")

# Defaults that are not in RecBole's model yaml (per-model training settings of this benchmark).
TRAIN_DEFAULTS = {
    "DIN": {"learning_rate": 0.001, "train_batch_size": 2048, "eval_batch_size": 4096},
    "SASRec": {"learning_rate": 0.001, "train_batch_size": 512, "eval_batch_size": 4096},
}

log = logging.getLogger("recbole_runner")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="folder that holds <dataset>/<dataset>.*.inter")
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", required=True, choices=["DIN", "SASRec"])
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--out", required=True, help="result JSON path (written atomically)")
    p.add_argument("--epochs", type=int, default=300, help="max epochs (RecBole's default: 300)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop before an epoch that would push train+valid time past this")
    p.add_argument("--batch-size", type=int, default=None, help="train batch size")
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--embedding-size", type=int, default=None,
                   help="DIN: embedding_size; SASRec: hidden_size (default: RecBole's model yaml)")
    p.add_argument("--patience", type=int, default=2,
                   help="stop after this many epochs without a strictly better valid metric")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--predictions", default=None,
                   help="DIN only: write test (user, label, score) to this .npz so GAUC can be computed "
                        "by the project's own evaluator")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# Input checks (plain Python, before RecBole touches the files)
# --------------------------------------------------------------------------------------------

def read_header(path):
    with open(path, encoding="utf-8") as f:
        head = f.readline().rstrip("\n")
    cols = {}
    for field_type in head.split("\t"):
        name, _, ftype = field_type.partition(":")
        cols[name] = ftype
    return cols


def scan_inter(path, model):
    """Count data rows (non-blank lines after the header) and check the history column."""
    cols = read_header(path)
    expected = {"user_id": "token", "item_id_list": "token_seq", "item_id": "token"}
    if model == "DIN":
        expected["label"] = "float"
    for name, ftype in expected.items():
        if cols.get(name) != ftype:
            raise ValueError(f"{path}: header needs `{name}:{ftype}`, got {cols}")
    hist_idx = list(cols).index("item_id_list")
    n_rows = n_empty = max_len = 0
    with open(path, encoding="utf-8") as f:
        next(f)
        for line in f:
            if not line.strip():
                continue  # pandas skips blank lines too
            n_rows += 1
            hist = line.rstrip("\n").split("\t")[hist_idx]
            length = len(hist.split())
            n_empty += length == 0
            max_len = max(max_len, length)
    if max_len > MAX_ITEM_LIST_LENGTH:
        raise ValueError(f"{path}: a history has {max_len} items > MAX_ITEM_LIST_LENGTH="
                         f"{MAX_ITEM_LIST_LENGTH}; the exporter must keep the most recent ones")
    return n_rows, n_empty


# --------------------------------------------------------------------------------------------
# RecBole configuration
# --------------------------------------------------------------------------------------------

def build_config_dict(args, data_dir, workdir):
    ds_dir = os.path.join(data_dir, args.dataset)
    defaults = TRAIN_DEFAULTS[args.model]
    cfg = {
        # environment
        "data_path": data_dir,
        "checkpoint_dir": os.path.join(workdir, "saved"),
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "log_wandb": False,
        "worker": 0,
        "save_dataset": False,
        "save_dataloaders": False,
        # pre-split files: <dataset>.{train,valid,test}.inter, read as written
        "benchmark_filename": list(SPLITS),
        "field_separator": "\t",
        "seq_separator": " ",
        "USER_ID_FIELD": "user_id",
        "ITEM_ID_FIELD": "item_id",
        "alias_of_item_id": ["item_id_list"],  # one id table for history and target
        "LIST_SUFFIX": "_list",
        "ITEM_LIST_LENGTH_FIELD": "item_length",
        "MAX_ITEM_LIST_LENGTH": MAX_ITEM_LIST_LENGTH,
        "val_interval": None,
        "unused_col": None,
        "user_inter_num_interval": None,
        "item_inter_num_interval": None,
        "train_neg_sample_args": None,
        "metric_decimal_place": 6,  # RecBole rounds metrics to 4 places by default
        # training
        "epochs": args.epochs,
        "stopping_step": args.patience,  # informational; our loop does the stopping
        "learning_rate": args.lr if args.lr is not None else defaults["learning_rate"],
        "train_batch_size": args.batch_size or defaults["train_batch_size"],
        "eval_batch_size": args.eval_batch_size or defaults["eval_batch_size"],
    }
    if args.model == "DIN":
        load_col = {"inter": ["user_id", "item_id_list", "item_id", "label"]}
        for source, wanted, id_col in (("item", DIN_ITEM_COLS, "item_id"),
                                       ("user", DIN_USER_COLS, "user_id")):
            path = os.path.join(ds_dir, f"{args.dataset}.{source}")
            if not os.path.isfile(path):
                continue
            cols = read_header(path)
            if id_col not in cols:
                raise ValueError(f"{path}: no `{id_col}` column in header {cols}")
            use = [c for c in wanted if c in cols]
            for c in use:
                if cols[c].startswith("float"):
                    log.warning("%s: %s is %s; RecBole uses float fields only when listed "
                                "in numerical_features, so DIN will ignore it", path, c, cols[c])
            ignored = [c for c in cols if c != id_col and c not in use]
            if ignored:
                log.info("%s: not loading columns %s", path, ignored)
            if use:
                load_col[source] = [id_col] + use
        cfg.update({
            "load_col": load_col,
            "LABEL_FIELD": "label",
            "threshold": None,  # labels come from the files
            "eval_args": {"split": {"RS": [0.8, 0.1, 0.1]}, "group_by": None,
                          "mode": "labeled", "order": "TO"},  # split ignored; TO required
            "metrics": ["AUC", "LogLoss"],
            "valid_metric": "AUC",
            "valid_metric_bigger": True,
        })
        if args.embedding_size:
            cfg["embedding_size"] = args.embedding_size
    else:
        cfg.update({
            "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
            "loss_type": "CE",
            "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user",
                          "mode": "full", "order": "TO"},  # split ignored; TO required
            "metrics": ["Recall", "NDCG", "MRR", "Hit"],
            "topk": [10, 20],
            "valid_metric": "NDCG@10",
            "valid_metric_bigger": True,
        })
        if args.embedding_size:
            cfg["hidden_size"] = args.embedding_size
    return cfg


def make_config(args, config_dict):
    from recbole.config import Config

    # RecBole's Config also parses sys.argv for `--key=value`; hide our own arguments from it.
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]
    try:
        return Config(model=args.model, dataset=args.dataset, config_dict=config_dict)
    finally:
        sys.argv = saved_argv


def model_yaml_keys(model):
    import recbole
    import yaml

    path = os.path.join(os.path.dirname(recbole.__file__), "properties", "model", f"{model}.yaml")
    with open(path, encoding="utf-8") as f:
        return list((yaml.safe_load(f) or {}).keys())


def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def write_json_atomic(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=d)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def main(argv=None):
    args = parse_args(argv)
    t_wall0 = time.perf_counter()
    if args.threads < 1 or args.epochs < 1 or args.patience < 1:
        raise SystemExit("--threads, --epochs and --patience must be >= 1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy / torch are imported
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s  %(message)s", datefmt="%H:%M:%S")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    data_dir = os.path.abspath(args.data_dir)
    out_path = os.path.abspath(args.out)
    if args.predictions:
        args.predictions = os.path.abspath(args.predictions)  # the runner changes directory below
    ds_dir = os.path.join(data_dir, args.dataset)

    line_counts, empty_hist = {}, {}
    for split in SPLITS:
        path = os.path.join(ds_dir, f"{args.dataset}.{split}.inter")
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        line_counts[split], empty_hist[split] = scan_inter(path, args.model)
    log.info("rows in files: %s", line_counts)
    if any(empty_hist.values()):
        log.warning("rows with an empty history: %s", empty_hist)
    if args.model == "SASRec" and any(empty_hist.values()):
        raise ValueError("SASRec rows need a non-empty history (it reads position len-1)")

    import numpy as np  # noqa: F401  (imported after the thread variables are set)
    import torch

    torch.set_num_threads(args.threads)

    import recbole
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    # RecBole writes log_tensorboard/ and a checkpoint dir relative to the cwd: keep them out
    # of the caller's tree.
    workdir = tempfile.mkdtemp(prefix="recbole_runner_")
    cwd = os.getcwd()
    os.chdir(workdir)
    trainer = None
    try:
        config_dict = build_config_dict(args, data_dir, workdir)
        config = make_config(args, config_dict)
        init_seed(config["seed"], config["reproducibility"])

        t0 = time.perf_counter()
        dataset = create_dataset(config)
        log.info("%s", dataset)

        # Guards against silent mis-reads: split sizes and the shared item id table.
        file_sizes = dict(zip(SPLITS, (int(x) for x in dataset.file_size_list)))
        if file_sizes != line_counts:
            raise RuntimeError(f"RecBole read {file_sizes} rows, files hold {line_counts}")
        id_list = dataset.field2id_token.get("item_id_list")
        if id_list is None or not np.array_equal(id_list, dataset.field2id_token["item_id"]):
            raise RuntimeError("item_id_list and item_id do not share one id table "
                               "(alias_of_item_id not applied)")

        train_data, valid_data, test_data = data_preparation(config, dataset)
        built = {s: len(d._dataset) for s, d in zip(SPLITS, (train_data, valid_data, test_data))}
        if built != line_counts:
            raise RuntimeError(f"RecBole built splits of {built} rows, files hold {line_counts}")
        load_s = time.perf_counter() - t0
        log.info("data loaded and split in %.1fs: %s", load_s, built)

        init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        log.info("%s", model)
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        trainer.eval_collector.data_collect(train_data)
        valid_metric = trainer.valid_metric  # lower-case, e.g. "auc", "ndcg@10"

        n_train = line_counts["train"]
        epoch_train_s, epoch_valid_s, epoch_loss, valid_history = [], [], [], []
        best_score, best_epoch, best_valid, best_state = -math.inf, -1, None, None
        bad_epochs, stop_reason = 0, "max_epochs"
        loop_start = time.perf_counter()
        for epoch in range(args.epochs):
            t_tr = time.perf_counter()
            loss = trainer._train_epoch(train_data, epoch, show_progress=False)
            tr_s = time.perf_counter() - t_tr
            loss = float(sum(loss)) if isinstance(loss, tuple) else float(loss)

            t_va = time.perf_counter()
            score, valid_result = trainer._valid_epoch(valid_data, show_progress=False)
            va_s = time.perf_counter() - t_va

            epoch_train_s.append(tr_s)
            epoch_valid_s.append(va_s)
            epoch_loss.append(loss)
            valid_history.append({k: float(v) for k, v in valid_result.items()})
            improved = score > best_score
            if improved:
                best_score, best_epoch = score, epoch
                best_valid = dict(valid_history[-1])
                best_state = (copy.deepcopy(model.state_dict()),
                              copy.deepcopy(model.other_parameter()))
                bad_epochs = 0
            else:
                bad_epochs += 1
            log.info("epoch %d: train %.1fs (%.0f samples/s, loss sum %.4f), valid %.1fs, "
                     "%s %.4f%s", epoch, tr_s, n_train / tr_s, loss, va_s, valid_metric, score,
                     " *best*" if improved else "")

            if bad_epochs >= args.patience:
                stop_reason = "early_stop"
                break
            if epoch + 1 >= args.epochs:
                break
            if args.time_budget_s is not None:
                elapsed = time.perf_counter() - loop_start
                next_epoch = max(a + b for a, b in zip(epoch_train_s, epoch_valid_s))
                if elapsed + next_epoch > args.time_budget_s:
                    stop_reason = "time_budget"
                    log.info("stopping: %.0fs used, another epoch (~%.0fs) would pass the "
                             "%.0fs budget", elapsed, next_epoch, args.time_budget_s)
                    break
        epochs_run = len(epoch_train_s)
        if best_state is None:
            raise RuntimeError(f"no epoch gave a finite {valid_metric}: {valid_history}")

        # Test once, with the best-on-validation weights.
        model.load_state_dict(best_state[0])
        model.load_other_parameter(best_state[1])
        if best_epoch != epochs_run - 1:  # weights changed since the best epoch: check restore
            _, check = trainer._valid_epoch(valid_data, show_progress=False)
            if any(abs(float(check[k]) - v) > 1e-6 for k, v in best_valid.items()):
                raise RuntimeError(f"restored weights give valid {dict(check)}, "
                                   f"best epoch gave {best_valid}")
        t_te = time.perf_counter()
        test_result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        test_s = time.perf_counter() - t_te
        test = {k.lower(): float(v) for k, v in test_result.items()}
        log.info("best epoch %d (valid %s %.4f); test %s", best_epoch, valid_metric,
                 best_score, test)
        if args.predictions and args.model == "DIN":
            # Same weights, same rows, in file order: GAUC needs per-sample scores RecBole does not report.
            users, labels, scores = [], [], []
            model.eval()
            with torch.no_grad():
                for batched in test_data:
                    interaction = batched[0].to(config["device"])
                    scores.append(model.predict(interaction).float().cpu().numpy())
                    users.append(interaction["user_id"].cpu().numpy())
                    labels.append(interaction["label"].cpu().numpy())
            tmp = args.predictions + ".tmp.npz"
            np.savez(tmp, user=np.concatenate(users), label=np.concatenate(labels),
                     score=np.concatenate(scores))
            os.replace(tmp, args.predictions)
            log.info("wrote test predictions to %s", args.predictions)

        hp = {
            "learner": config["learner"],
            "learning_rate": config["learning_rate"],
            "train_batch_size": config["train_batch_size"],
            "eval_batch_size": config["eval_batch_size"],
            "weight_decay": config["weight_decay"],
            "max_epochs": args.epochs,
            "patience": args.patience,
            "time_budget_s": args.time_budget_s,
            "threads": args.threads,
            "MAX_ITEM_LIST_LENGTH": config["MAX_ITEM_LIST_LENGTH"],
            "valid_metric": config["valid_metric"],
            "metrics": config["metrics"],
            "topk": config["topk"] if args.model == "SASRec" else None,
            "eval_mode": config["eval_args"]["mode"],
            "load_col": config["load_col"],
            "train_neg_sample_args": config["train_neg_sample_args"],
        }
        for key in model_yaml_keys(args.model):
            hp[key] = config[key]

        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
        result = {
            "model": args.model,
            "dataset": args.dataset,
            "seed": args.seed,
            "config": jsonable(hp),
            "epochs_run": epochs_run,
            "best_epoch": best_epoch,
            "stop_reason": stop_reason,
            "valid": best_valid,
            "test": test,
            "train_samples": n_train,
            "split_rows": line_counts,
            "train_seconds_per_epoch": epoch_train_s,
            "valid_seconds_per_epoch": epoch_valid_s,
            "train_samples_per_s": float(np.mean([n_train / s for s in epoch_train_s])),
            "train_loss_sum_per_epoch": epoch_loss,
            "valid_per_epoch": valid_history,
            "load_seconds": load_s,
            "test_seconds": test_s,
            "wall_s": time.perf_counter() - t_wall0,
            "peak_rss_mb": peak_rss_mb,
            "recbole_version": recbole.__version__,
            "torch_version": torch.__version__,
            "device": str(config["device"]),
            # RecBole's counts include its [PAD] id 0; these exclude it.
            "n_users": int(dataset.user_num) - 1,
            "n_items": int(dataset.item_num) - 1,
        }
        write_json_atomic(out_path, jsonable(result))
        log.info("wrote %s", out_path)
    finally:
        if trainer is not None:
            trainer.tensorboard.close()
        os.chdir(cwd)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
