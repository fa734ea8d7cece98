"""The GPU path of the beyond-log generators: the same answers as on CPU, and training that selects on a task metric.

Skipped without CUDA (CI has none); run on a GPU machine with `python -m pytest tests/gbr/test_cuda.py tests/rank/test_topk_cuda.py`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from reaseq.config import ModelConfig, TrainConfig
from reaseq.data.dataset import SequenceData
from reaseq.gbr.baselines import generate_autoregressive, train_sasrec_generator
from reaseq.gbr.beyond_log import build_beyond_log, evaluate_lists
from reaseq.gbr.config import BeyondLogConfig
from reaseq.gbr.infer import generation_quality, infer
from reaseq.gbr.model import MaskedDiffusionLM
from reaseq.gbr.train import train_gbr
from tests.gbr.conftest import tiny_gbr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
K = 3


@pytest.fixture
def split(mixed_chains: SequenceData):
    return build_beyond_log(mixed_chains, BeyondLogConfig(off_platform_genres=["Horror", "Sci-Fi"], target_user_frac=0.3, k=K))


@pytest.mark.parametrize(("steps", "remasking", "temperature", "context"), [(1, "confidence", 0.0, "all"), (3, "confidence", 0.0, "recent"), (2, "random", 1.0, "all")])
def test_inference_on_the_gpu_matches_the_cpu(mixed_chains: SequenceData, split, steps: int, remasking: str, temperature: float, context: str) -> None:
    torch.manual_seed(0)
    on_cpu = MaskedDiffusionLM(mixed_chains.n_items, tiny_gbr(max_len=8, k=K)).eval()
    on_gpu = copy.deepcopy(on_cpu).cuda()
    kwargs = {"allowed": split.allowed, "remasking": remasking, "temperature": temperature, "context": context, "seed": 7}
    cpu_items, cpu_conf = infer(on_cpu, split.histories, K, steps, **kwargs)  # type: ignore[arg-type]
    gpu_items, gpu_conf = infer(on_gpu, split.histories, K, steps, **kwargs)  # type: ignore[arg-type]
    assert np.array_equal(cpu_items, gpu_items)
    assert np.allclose(cpu_conf, gpu_conf, atol=1e-4)


def test_gbr_trains_on_the_gpu_and_selects_on_recall(mixed_chains: SequenceData, split) -> None:
    recalls: list[float] = []

    def recall(model: MaskedDiffusionLM) -> float:
        assert model.output_bias.device.type == "cuda"  # the selection runs on the model where it trains
        items, _ = infer(model, split.histories, K, steps=1, allowed=split.allowed)
        recalls.append(evaluate_lists(items, split, K)[f"recall@{K}"])
        return recalls[-1]

    model, record = train_gbr(mixed_chains, split.visible_rows, tiny_gbr(k=K, response_frac=0.5, device="cuda", epochs=10, patience=10), response_items=split.off_platform, select=recall)
    assert model.output_bias.device.type == "cpu"  # inference for tables and the saved weights live on CPU
    assert record.fit.best_valid == max(recalls) and max(recalls) > recalls[0]
    items, confidence = infer(model, split.histories, K, steps=1, allowed=split.allowed)
    assert generation_quality(items, split.histories, split.allowed, mixed_chains.n_items) == {"validity": 1.0, "duplicate_rate": 0.0, "novelty": 1.0}
    assert ((confidence > 0) & (confidence <= 1)).all()


def test_sasrec_generator_trains_and_generates_on_the_gpu(mixed_chains: SequenceData, split) -> None:
    model_cfg = ModelConfig(name="sasrec", embedding_dim=16, num_layers=1, num_heads=2, dropout=0.0)
    train_cfg = TrainConfig(epochs=3, batch_size=256, lr=0.01, patience=3, progress=False, device="cuda")
    generator = train_sasrec_generator(mixed_chains, split.visible_rows, model_cfg, train_cfg, max_len=6, seed=0, valid_user_frac=0.1)
    assert generator.model.item_embedding.weight.device.type == "cuda"
    assert generator.fit.curves["valid"][-1] > generator.fit.curves["valid"][0]
    items, confidence = generate_autoregressive(generator, split.histories, K, split.allowed)
    on_cpu = type(generator)(copy.deepcopy(generator.model).cpu(), generator.max_len, generator.fit, generator.wall_s)
    cpu_items, cpu_conf = generate_autoregressive(on_cpu, split.histories, K, split.allowed)
    assert np.array_equal(items, cpu_items) and np.allclose(confidence, cpu_conf, atol=1e-4)
    assert generation_quality(items, split.histories, split.allowed, mixed_chains.n_items) == {"validity": 1.0, "duplicate_rate": 0.0, "novelty": 1.0}
