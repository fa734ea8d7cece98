"""Rankers: shapes, padding, the item encoder, the training loop's model selection, popularity baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reaseq.config import ModelConfig, RunConfig, TrainConfig
from reaseq.data.batches import CTRBatcher
from reaseq.data.protocols import VALID, build_ctr_samples, build_topk_split
from reaseq.evaluate.metrics import ctr_metrics
from reaseq.rank.ctr import predict_ctr, run_ctr
from reaseq.rank.fit import fit
from reaseq.rank.models.din import build_din
from reaseq.rank.models.item_encoder import build_item_encoder
from reaseq.rank.models.popularity import CTR_SMOOTHING, PopularityCTR, PopularityTopK
from reaseq.rank.models.sasrec import build_sasrec
from reaseq.rank.topk import rank_targets, run_topk

DIM = 8


def model_cfg(**fields: object) -> ModelConfig:
    return ModelConfig(embedding_dim=DIM, attention_hidden=[8, 4], mlp_hidden=[16], dropout=0.0, num_layers=1, num_heads=2, **fields)


def din_batch(histories: list[list[int]], length: int, targets: list[int], users: list[int], right_pad: bool = False) -> dict[str, torch.Tensor]:
    """A DIN batch with histories padded to `length` (left by default), action 1 on every real event."""
    hist = torch.zeros(len(histories), length, dtype=torch.long)
    for row, items in enumerate(histories):
        if items:
            if right_pad:
                hist[row, : len(items)] = torch.tensor(items)
            else:
                hist[row, length - len(items) :] = torch.tensor(items)
    return {
        "user": torch.tensor(users),
        "item": torch.tensor(targets),
        "label": torch.zeros(len(targets)),
        "hist_items": hist,
        "hist_actions": (hist > 0).long(),
    }


# --- DIN ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("softmax", [True, False])
def test_din_shapes_padding_and_mask(prepared, softmax: bool) -> None:
    data = prepared().data
    torch.manual_seed(0)
    model = build_din(data, model_cfg(attention_softmax=softmax)).eval()
    histories = [[], [3], [5, 9, 2], list(range(1, 8))]
    targets, users = [4, 7, 11, 20], [0, 1, 2, 3]
    with torch.no_grad():
        short = model(din_batch(histories, 8, targets, users))
        long = model(din_batch(histories, 20, targets, users))
        right = model(din_batch(histories, 20, targets, users, right_pad=True))
    assert short.shape == (4,) and short.dtype == torch.float32
    assert torch.isfinite(short).all()  # including the sample with an empty history
    # Only padding differs between these batches: the scores must not move.
    torch.testing.assert_close(short, long, rtol=0, atol=1e-6)
    torch.testing.assert_close(short, right, rtol=0, atol=1e-6)
    # ...while a real history event does move them (the comparison above is not vacuous).
    with torch.no_grad():
        other = model(din_batch([[], [4], [5, 9, 3], list(range(2, 9))], 8, targets, users))
    assert not torch.allclose(short[1:], other[1:])
    torch.testing.assert_close(short[0], other[0])


def test_din_uses_the_batcher_histories(prepared) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, RunConfig().protocol.ctr)
    model = build_din(data, model_cfg()).eval()
    batch = next(CTRBatcher(data, 6).iterate(samples, batch_size=32))
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (32,) and torch.isfinite(logits).all()
    probs = predict_ctr(model, CTRBatcher(data, 6), samples.take(np.arange(len(samples)) < 100), batch_size=7)
    assert probs.shape == (100,) and np.all((probs > 0) & (probs < 1))
    with torch.no_grad():
        np.testing.assert_allclose(probs[:32], torch.sigmoid(logits).numpy(), rtol=1e-5)


def test_din_inferred_target_features(prepared) -> None:
    data = prepared().data
    torch.manual_seed(0)
    model = build_din(data, model_cfg(inferred=True, inferred_attention=False, inferred_target_indicator=True)).eval()
    assert model.inferred.attention is None and model.inferred.out_dim == 2
    targets = [4, 7, 11]
    batch = din_batch([[3], [5, 9], [2]], 4, targets, [0, 1, 2])
    inf_items = torch.tensor([[4, 6, 0], [6, 8, 0], [11, 0, 0]])  # targets 4 and 11 were inferred, 7 was not
    inf_conf = torch.tensor([[0.5, 0.2, 0.0], [0.4, 0.3, 0.0], [0.9, 0.0, 0.0]])
    target = model.item_encoder.lookup(torch.tensor(targets))[0]
    features = model.inferred(torch.tensor(targets), target, inf_items, None, inf_conf)
    torch.testing.assert_close(features, torch.tensor([[0.5, 1.0], [0.0, 0.0], [0.9, 1.0]]))
    with torch.no_grad():
        scores = model({**batch, "inf_items": inf_items, "inf_conf": inf_conf})
        # Without the attention only the target's own membership counts: other inferred items change nothing...
        others = model({**batch, "inf_items": torch.tensor([[4, 9, 0], [8, 0, 0], [11, 5, 0]]), "inf_conf": inf_conf})
        # ...while taking a target out of the list does (the indicator is read).
        removed = model({**batch, "inf_items": torch.tensor([[6, 0, 0], [6, 8, 0], [11, 0, 0]]), "inf_conf": inf_conf})
    torch.testing.assert_close(scores, others)
    assert not torch.allclose(scores[0], removed[0])
    torch.testing.assert_close(scores[1:], removed[1:])


def test_din_inferred_attention_reads_every_inferred_item(prepared) -> None:
    data = prepared().data
    torch.manual_seed(0)
    model = build_din(data, model_cfg(inferred=True)).eval()
    assert model.inferred.attention is not None and model.inferred.out_dim == DIM + 1
    batch = din_batch([[3], [5, 9]], 4, [4, 7], [0, 1])
    inf_conf = torch.full((2, 2), 0.1)
    with torch.no_grad():
        scores = model({**batch, "inf_items": torch.tensor([[6, 8], [6, 8]]), "inf_conf": inf_conf})
        others = model({**batch, "inf_items": torch.tensor([[6, 9], [6, 9]]), "inf_conf": inf_conf})
    assert not torch.allclose(scores, others)


# --- item encoder ----------------------------------------------------------------------------------


def test_item_encoder_widths(prepared) -> None:
    data = prepared().data
    assert data.n_genres > 0 and data.n_years > 0
    items = torch.tensor([[0, 1, 2], [3, 0, data.n_items]])
    cases = [("sum", True, DIM, 3), ("concat", True, 3 * DIM, 3), ("sum", False, DIM, 1), ("concat", False, DIM, 1)]
    for fusion, features, width, n_parts in cases:
        encoder = build_item_encoder(data, DIM, features, fusion)
        assert len(encoder.parts) == n_parts
        assert encoder.out_dim == width
        out = encoder(items)
        assert out.shape == (2, 3, width)
        assert torch.all(out[0, 0] == 0) and torch.all(out[1, 1] == 0)  # padding item -> zeros
        assert out[0, 1].abs().sum() > 0
    # The DIN built on a concat encoder takes the wider vectors end to end.
    model = build_din(data, model_cfg(item_fusion="concat")).eval()
    assert model.item_encoder.out_dim == 3 * DIM
    with torch.no_grad():
        assert model(din_batch([[1, 2]], 4, [3], [0])).shape == (1,)


def test_item_encoder_sum_needs_one_width(prepared) -> None:
    from reaseq.rank.models.item_encoder import IdPart, ItemEncoder

    with pytest.raises(ValueError, match="one width"):
        ItemEncoder({"a": IdPart(5, 4), "b": IdPart(5, 8)}, "sum")
    assert ItemEncoder({"a": IdPart(5, 4), "b": IdPart(5, 8)}, "concat").out_dim == 12


# --- SASRec ----------------------------------------------------------------------------------------


def test_sasrec_shapes_padding_and_causality(prepared) -> None:
    data = prepared().data
    torch.manual_seed(0)
    max_len = 6
    model = build_sasrec(data, max_len, model_cfg()).eval()
    seq = torch.tensor([[0, 0, 0, 0, 0, 7], [0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6], [0, 0, 9, 8, 7, 6]])
    with torch.no_grad():
        scores = model(seq)
        hidden = model.hidden(seq)
    assert scores.shape == (4, data.n_items + 1)
    assert hidden.shape == (4, max_len, DIM)
    assert torch.isfinite(scores).all() and torch.isfinite(hidden).all()  # fully padded prefix, even all padding
    # Causal: the state at position t does not depend on later items.
    changed = seq.clone()
    changed[:, -1] = torch.tensor([3, 0, 9, 1])
    with torch.no_grad():
        hidden_changed = model.hidden(changed)
    torch.testing.assert_close(hidden[:, :-1], hidden_changed[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(hidden[2, -1], hidden_changed[2, -1])
    # Shorter windows (evaluation of users with less history) work too.
    with torch.no_grad():
        assert model(seq[:, -3:]).shape == (4, data.n_items + 1)


# --- the training loop -----------------------------------------------------------------------------


def test_fit_keeps_the_best_validation_weights(tmp_path: Path) -> None:
    model = nn.Linear(1, 1, bias=False)
    scores = [0.50, 0.90, 0.70, 0.95, 0.60, 0.55, 0.99]

    def train_epoch(epoch: int) -> tuple[float, int]:
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        return 1.0 / (epoch + 1), 10

    validate = lambda: scores[int(model.weight.item())]  # noqa: E731
    result = fit(model, train_epoch, validate, TrainConfig(epochs=7, patience=2), tmp_path / "model.pt")
    # Epoch 3 is best; epochs 4 and 5 do not improve, so patience 2 stops before epoch 6's 0.99.
    assert result.epochs_run == 6
    assert result.curves["valid"] == scores[:6]
    assert result.best_epoch == int(np.argmax(result.curves["valid"])) == 3
    assert result.best_valid == 0.95
    assert model.weight.item() == 3.0  # the best epoch's weights, not the last ones
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["state_dict"]["weight"].item() == 3.0 and saved["meta"]["epoch"] == 3


def test_din_fit_reduces_loss_and_keeps_best_weights(prepared, run_config: RunConfig, tmp_path: Path) -> None:
    data = prepared().data
    samples = build_ctr_samples(data, run_config.protocol.ctr)
    result = run_ctr(data, samples, run_config, seed=0, out_dir=tmp_path)
    curves = result["curves"]
    assert result["epochs_run"] == 2 and len(curves["train_loss"]) == 2
    assert curves["train_loss"][1] < curves["train_loss"][0]
    assert result["best_epoch"] == int(np.argmax(curves["valid"]))
    # The reported validation AUC is the selected epoch's one, and so is the checkpoint's.
    assert result["valid"]["metrics"]["auc"] == pytest.approx(curves["valid"][result["best_epoch"]], abs=1e-9)
    model = build_din(data, run_config.model)
    checkpoint = torch.load(tmp_path / "model.pt", weights_only=True)
    assert checkpoint["meta"]["epoch"] == result["best_epoch"]
    model.load_state_dict(checkpoint["state_dict"])
    valid = samples.of(VALID)
    probs = predict_ctr(model, CTRBatcher(data, run_config.protocol.ctr.max_len), valid, 100)
    assert ctr_metrics(valid.user, valid.label, probs)["auc"] == pytest.approx(curves["valid"][result["best_epoch"]], abs=1e-9)
    assert result["test"]["metrics"]["auc"] > 0.55  # ratings follow item quality: two epochs learn some of it


# --- popularity baselines --------------------------------------------------------------------------


def test_popularity_topk_ranks_by_count() -> None:
    model = PopularityTopK(6).fit(np.array([2, 2, 2, 5, 5, 1, 2, 5, 3]))
    scores = model.scores(3)
    assert scores.shape == (3, 7)
    assert scores[0].tolist() == [0, 1, 4, 1, 0, 3, 0]
    order = torch.argsort(scores[0, 1:], descending=True, stable=True) + 1
    assert order[:4].tolist() == [2, 5, 1, 3]


def test_popularity_ctr_smoothed_rate() -> None:
    items = np.array([1] * 20 + [2] * 2 + [3] * 10)
    labels = np.array([1.0] * 15 + [0.0] * 5 + [1.0, 1.0] + [0.0] * 10)
    model = PopularityCTR(4).fit(items, labels)
    prior = labels.mean()
    expected = [(15 + CTR_SMOOTHING * prior) / (20 + CTR_SMOOTHING), (2 + CTR_SMOOTHING * prior) / (2 + CTR_SMOOTHING), CTR_SMOOTHING * prior / (10 + CTR_SMOOTHING), prior]
    np.testing.assert_allclose(model.predict(np.array([1, 2, 3, 4])), expected)
    # 15/20 positives beat 2/2: the smoothing trusts the item with more evidence.
    assert model.predict(np.array([1]))[0] > model.predict(np.array([2]))[0] > model.predict(np.array([4]))[0] > model.predict(np.array([3]))[0]


def test_popularity_topk_run_ranks_targets_by_train_counts(prepared, run_config: RunConfig) -> None:
    data = prepared().data
    split = build_topk_split(data, run_config.protocol.topk)
    cfg = run_config.model_copy(update={"model": run_config.model.model_copy(update={"name": "popularity"}), "protocol": run_config.protocol.model_copy(update={"name": "topk"})})
    counts = np.bincount(split.data.items[split.train_mask()], minlength=data.n_items + 1)
    model = PopularityTopK(data.n_items).fit(split.data.items[split.train_mask()])
    ranks = rank_targets(lambda seq: model.scores(len(seq)), split, VALID, cfg)
    targets = split.data.items[split.valid_pos]
    # Pessimistic ties: every other real item with a count >= the target's is ranked above it.
    expected = [int((counts[1:] >= counts[t]).sum()) - 1 for t in targets]
    assert ranks.tolist() == expected
    result = run_topk(split, cfg, seed=0)
    assert result["valid"]["metrics"]["n"] == len(split.users)
    assert result["valid"]["metrics"]["mrr"] == pytest.approx(float(np.mean(1.0 / (np.array(expected) + 1))))
