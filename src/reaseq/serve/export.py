"""Export the ranker to ONNX and score exported models with ONNX Runtime on CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reaseq.data.batches import Batch
from reaseq.io import atomic_path
from reaseq.serve.loader import DATA_DIR, load_ranker
from reaseq.serve.scorer import Scorer
from reaseq.serve.tables import tables_from_data

INPUT_NAMES = ("user", "item", "hist_items", "hist_actions")
OUTPUT_NAME = "probability"
ONNX_OPSET = 17  # supported by every onnxruntime release of the last years
# Batch rows and history length vary per request; everything else is fixed by the model.
DYNAMIC_AXES = {
    "user": {0: "batch"},
    "item": {0: "batch"},
    "hist_items": {0: "batch", 1: "history"},
    "hist_actions": {0: "batch", 1: "history"},
    OUTPUT_NAME: {0: "batch"},
}


class ProbabilityModel(nn.Module):
    """The ranker as a function of plain tensors returning click probabilities (what gets exported)."""

    def __init__(self, ranker: nn.Module) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, user: torch.Tensor, item: torch.Tensor, hist_items: torch.Tensor, hist_actions: torch.Tensor) -> torch.Tensor:
        logits = self.ranker({"user": user, "item": item, "hist_items": hist_items, "hist_actions": hist_actions})  # [B]
        return torch.sigmoid(logits)


def export_onnx(model: nn.Module, example_batch: Batch, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Write the ranker as an ONNX graph with dynamic batch and history axes; the file appears only when valid."""
    import onnx

    wrapper = ProbabilityModel(model).eval()  # the exporter restores this mode afterwards, so the ranker stays in eval
    args = tuple(example_batch[name].contiguous() for name in INPUT_NAMES)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # The TorchScript-based exporter: the newer torch.export one needs onnxscript, which is not a dependency.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper, args, str(tmp), dynamo=False, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes=DYNAMIC_AXES, opset_version=opset, do_constant_folding=True,
        )
        onnx.checker.check_model(str(tmp))
    return Path(path)


class OnnxScorer:
    """Scores batches with an exported ranker in ONNX Runtime on CPU."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        # Inputs a model does not read (e.g. `user` without user features) are pruned from the graph.
        self.inputs = [i.name for i in self.session.get_inputs()]

    def predict(self, batch: Batch) -> np.ndarray:
        """Click probabilities [B] of a batch in the same dict form the eager ranker takes."""
        feeds = {name: np.ascontiguousarray(batch[name].numpy(), dtype=np.int64) for name in self.inputs}
        return self.session.run([OUTPUT_NAME], feeds)[0]


def export_run(run_dir: Path, out: Path, seed: int | None = None) -> Path:
    """Export a run's trained ranker (with the serving tables' cold-user row) to `out`, checked against eager scores."""
    model, cfg, data = load_ranker(run_dir, seed)
    tables = tables_from_data(data, Path(run_dir) / DATA_DIR, cfg.protocol.ctr.max_len)
    scorer = Scorer(model, tables, cfg.model.name)
    user = next(iter(tables.user_index), "cold-user")
    items = list(tables.item_index)[:2]
    batch = scorer.batch(user, items)
    export_onnx(scorer.model, batch, out)
    exported = OnnxScorer(out).predict(batch)
    eager = scorer.predict(batch).numpy()
    if not np.allclose(exported, eager, atol=1e-5):
        raise RuntimeError(f"the exported model disagrees with the eager one by {np.abs(exported - eager).max():.2e}")
    return Path(out)
