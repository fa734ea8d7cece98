"""DDP through torchrun: real 2-process gloo runs on CPU of the ranker (`reaseq train`) and of GBR, against one process.

Run as a script (`python tests/rank/test_ddp.py gbr OUT`), this file is also the GBR worker that torchrun starts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from reaseq.cli import app
from reaseq.data.batches import shard_order
from reaseq.rank import distributed

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
TORCHRUN_TIMEOUT_S = 300  # two processes importing torch on a loaded two-core machine
# Test AUC of the 2-process run minus the single-process run, in absolute value. With train.batch_size the global
# batch, rank r's j-th batch is every 2nd sample of the single process's j-th batch (same seeded order), so the
# two runs take the same optimiser steps and differ only in float summation order (and, for an odd sample count,
# the one sample left out per epoch). Measured on this config (40 users, 834 train / 110 test samples, 3 epochs):
# a difference of exactly 0.0 for seeds 0-4, while the single-process test AUC itself moves 0.747-0.823 over those
# seeds (sd 0.03). 0.01 is a third of that seed sd and about 20 swapped positive/negative pairs of the test set:
# loose enough for reordering noise to flip a few near-ties, tight enough that a DDP run that trains on the wrong
# shards or never averages its gradients (which merely lands "somewhere within seed noise") fails.
AUC_TOLERANCE = 0.01
# Best validation loss of GBR (10 rounds on the chain data), 2 processes minus 1. Unlike the ranker, the runs are
# not step-for-step equal: each rank draws its own masking noise. Measured: -0.005, -0.036, +0.073 for seeds 0, 1, 4
# (loss about 2.0-2.4); changing only the noise stream of a single process moved it over a range of 0.13-0.17 for
# seeds 0 and 4. 0.25 is 1.5 times that range: noise passes, a DDP run that does not learn like one process fails.
GBR_VALID_TOLERANCE = 0.25


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 ARGS` (gloo on CPU), its output kept for the failure message."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


# --- sharding and the single-process no-ops --------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7, 10, 64])
def test_shards_are_disjoint_equal_and_rebuild_the_global_batches(n: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard_order(order, rank, WORLD) for rank in range(WORLD)]
    assert len({len(s) for s in shards}) == 1  # the same number of batches on every rank: no rank waits forever
    joined = torch.cat(shards)
    assert len(set(joined.tolist())) == len(joined) == n - n % WORLD  # each sample at most once; fewer than WORLD dropped
    global_batch = 4
    local = distributed.local_batch_size(global_batch, distributed.DistContext(0, WORLD))
    for start in range(0, len(shards[0]), local):
        together = sorted(torch.cat([s[start : start + local] for s in shards]).tolist())
        # = the single process's batch (its last one less the dropped remainder)
        assert together == sorted(order[: n - n % WORLD][start * WORLD : (start + local) * WORLD].tolist())


def test_single_process_helpers_change_nothing() -> None:
    ctx = distributed.init_from_env("cpu")  # no WORLD_SIZE in the test process: no process group
    assert ctx == distributed.SINGLE and ctx.is_main and ctx.part is None
    model = torch.nn.Linear(2, 1)
    assert distributed.wrap_model(model, ctx) is model
    order = torch.arange(5)
    assert torch.equal(distributed.shard_indices(order, ctx), order)
    assert distributed.all_reduce_mean(0.25, ctx) == 0.25 and distributed.local_batch_size(64, ctx) == 64
    distributed.barrier(ctx)
    distributed.cleanup()


# --- the ranker through `reaseq train` ---------------------------------------------------------------------


@pytest.mark.slow
def test_ctr_din_two_processes_match_one(config_file: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cfg["train"].update({"epochs": 3, "patience": 3})
    config_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    single, ddp = tmp_path / "single", tmp_path / "ddp"

    result = CliRunner().invoke(app, ["train", "-c", str(config_file), "--run-dir", str(single)])
    assert result.exit_code == 0, result.output
    done = torchrun(["-m", "reaseq.cli", "train", "-c", str(config_file), "--run-dir", str(ddp)], tmp_path)
    assert done.stdout.count("test auc:") == 1  # only rank 0 reports

    one = json.loads((single / "train" / "seed0" / "result.json").read_text(encoding="utf-8"))
    two = json.loads((ddp / "train" / "seed0" / "result.json").read_text(encoding="utf-8"))
    assert abs(two["test"]["metrics"]["auc"] - one["test"]["metrics"]["auc"]) < AUC_TOLERANCE
    assert two["epochs_run"] == one["epochs_run"] == 3 and two["train_samples"] == one["train_samples"]
    np.testing.assert_allclose(two["curves"]["train_loss"], one["curves"]["train_loss"], rtol=1e-4)

    # The weights rank 0 saved are those of one process: DDP averaged the ranks' gradients at every step.
    weights = [torch.load(run / "train" / "seed0" / "model.pt", weights_only=True)["state_dict"] for run in (single, ddp)]
    assert weights[0].keys() == weights[1].keys()  # the unwrapped module's names (no "module." prefix)
    for name in weights[0]:
        if name == "attention.rest.0.bias":
            # The last bias before the attention softmax shifts every score alike and changes nothing: its gradient is
            # rounding noise, which Adam scales up to full-size steps, so its value differs between any two runs.
            continue
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-4, atol=1e-5)

    # The run folder is whole and written once: every step recorded, every output present, no stray files.
    manifest = json.loads((ddp / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["steps"]) == {"prepare", "train_seed0"}
    assert all((ddp / out).exists() for step in manifest["steps"].values() for out in step["outputs"])
    assert (ddp / "metrics.json").exists() and (ddp / "report.md").exists()
    assert not list(ddp.rglob("*.tmp"))
    log = (ddp / "run.log").read_text(encoding="utf-8")
    assert log.count("step train_seed0: started") == 1 and log.count("epoch 2:") == 1  # rank 1 does not write it


# --- GBR -----------------------------------------------------------------------------------------------------


def gbr_case():  # noqa: ANN201
    """The chain data and a tiny GBR config of tests/gbr (imported here: the worker has no fixtures)."""
    from tests.gbr.conftest import CHAIN_LEN, N_CHAINS, chain_genres, chain_users, sequence_data, tiny_gbr

    data = sequence_data(chain_users(200, 6), N_CHAINS * CHAIN_LEN, chain_genres())
    return data, np.ones(len(data.items), dtype=bool), tiny_gbr(epochs=10, patience=10)


def gbr_worker(out: Path) -> None:
    """One torchrun rank: train GBR and save what it ended with (weights, curves) under its rank."""
    from reaseq.gbr.train import train_gbr

    data, rows, cfg = gbr_case()
    model, record = train_gbr(data, rows, cfg, checkpoint=out / "gbr.pt")
    ctx = distributed.current()
    torch.save({"state_dict": model.state_dict(), "curves": record.curves, "world_size": ctx.world_size}, out / f"rank{ctx.rank}.pt")
    distributed.cleanup()


@pytest.mark.slow
def test_gbr_two_processes_end_with_the_same_weights(tmp_path: Path) -> None:
    from reaseq.gbr.train import train_gbr

    torchrun([str(Path(__file__).resolve()), "gbr", str(tmp_path)], tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)]
    assert all(r["world_size"] == WORLD for r in ranks)
    assert ranks[0]["curves"] == ranks[1]["curves"]  # losses averaged over ranks: the same early-stopping inputs
    assert all(math.isfinite(v) for v in ranks[0]["curves"]["train_loss"] + ranks[0]["curves"]["valid_loss"])
    for name, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][name]), name
    assert (tmp_path / "gbr.pt").exists()

    # Against one process: the same windows per step, but each rank draws its own masks, so the runs differ by
    # masking noise only (see GBR_VALID_TOLERANCE).
    data, rows, cfg = gbr_case()
    _, single = train_gbr(data, rows, cfg)
    assert abs(min(ranks[0]["curves"]["valid_loss"]) - min(single.curves["valid_loss"])) < GBR_VALID_TOLERANCE


@pytest.mark.slow
def test_gbr_step_under_torchrun_writes_one_table(config_file: Path, tmp_path: Path) -> None:
    cfg = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    cfg["gbr"] = {"dim": 8, "layers": 1, "heads": 2, "max_len": 12, "batch_size": 32, "epochs": 3, "patience": 3, "k": 4, "steps": 2, "init_from_knowledge": False}
    config_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    run = tmp_path / "gbr-ddp"
    done = torchrun(["-m", "reaseq.cli", "gbr", "-c", str(config_file), "--run-dir", str(run)], tmp_path)
    assert done.stdout.count("inferred behaviours:") == 1  # only rank 0 reports
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["steps"]) == {"prepare", "gbr"}
    assert all((run / out).exists() for step in manifest["steps"].values() for out in step["outputs"])
    assert (run / "run.log").read_text(encoding="utf-8").count("step gbr: started") == 1
    summary = json.loads((run / "gbr" / "summary.json").read_text(encoding="utf-8"))
    assert summary["validity"] == 1.0 and summary["rounds"] == 3


if __name__ == "__main__":
    if sys.argv[1:2] == ["gbr"]:
        gbr_worker(Path(sys.argv[2]))
