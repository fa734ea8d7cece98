"""SASRec's top-K run on a GPU: it trains there, and its ranks are the ones its weights give on CPU.

Skipped without CUDA (CI has none).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reaseq.config import RunConfig
from reaseq.data.protocols import TEST, build_topk_split
from reaseq.rank.models.sasrec import build_sasrec
from reaseq.rank.topk import rank_targets, run_topk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_sasrec_topk_trains_on_the_gpu_and_ranks_like_its_cpu_copy(prepared, run_config: RunConfig, tmp_path) -> None:
    data = prepared().data
    cfg = run_config.model_copy(update={
        "model": run_config.model.model_copy(update={"name": "sasrec", "num_layers": 1, "num_heads": 2, "dropout": 0.0}),
        "protocol": run_config.protocol.model_copy(update={"name": "topk"}),
        "train": run_config.train.model_copy(update={"device": "cuda", "epochs": 2, "patience": 2}),
    })
    split = build_topk_split(data, cfg.protocol.topk)
    result = run_topk(split, cfg, seed=0, out_dir=tmp_path)
    assert result["epochs_run"] == 2 and result["test"]["metrics"]["n"] == len(split.users)
    # The kept weights, scored on CPU, give the same ranks as the run reported.
    net = build_sasrec(split.data, cfg.protocol.topk.max_len, cfg.model)
    net.load_state_dict(torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)["state_dict"])
    net.eval()
    cpu_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})})
    with torch.no_grad():
        ranks = rank_targets(lambda seq: net(seq), split, TEST, cpu_cfg)
    assert result["test"]["metrics"]["mrr"] == pytest.approx(float(np.mean(1.0 / (ranks + 1))), rel=0.02)  # near-ties may order differently in GPU arithmetic
