"""Serving batches hold one user and many candidates: score them with `DIN.forward_one_user`, checked first.

`Scorer.batch` repeats the user's history (and inferred behaviours) on every candidate row. The ranker's own
forward would encode that history, its mean and its attention keys once per row: with 100 candidates and a
50-event history, 5,000 item encodings for 50 distinct events. `DIN.forward_one_user` runs the user's side
once and broadcasts it; only the target encoding, the attention and the final MLP run per candidate. It is
the same code as `DIN.forward` (both call `DIN.score`), and before serving with it the scorer checks it
against `model(batch)` on probe batches, so a ranker it does not fit is served by its own forward instead.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from reaseq.data.batches import Batch

log = logging.getLogger("reaseq")

VERIFY_ATOL = 1e-5  # logits; float rounding differences are ~1e-7


class OneUserForward(nn.Module):
    """Calls the ranker's `forward_one_user`: a module, so the scorer treats both paths alike."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model.forward_one_user(batch)


def one_user_forward(model: nn.Module, probes: list[Batch]) -> nn.Module | None:
    """The one-user path of `model` when it has one and scores the `probes` (serving batches) like `model` does, else None."""
    if not callable(getattr(model, "forward_one_user", None)):
        return None
    fast = OneUserForward(model).eval()
    with torch.inference_mode():
        for probe in probes:
            expected = model(probe)  # a ranker that cannot score a serving batch fails here, at load, not per request
            try:
                got = fast(probe)
            except Exception as exc:  # noqa: BLE001 - whatever the ranker cannot do on this path, its own forward serves
                log.warning("one-user forward off: it does not fit the ranker (%s: %s)", type(exc).__name__, exc)
                return None
            diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
            if not diff <= VERIFY_ATOL:  # NaN counts as a disagreement
                log.warning("one-user forward off: it disagrees with the ranker's forward by %.2e", diff)
                return None
    return fast
