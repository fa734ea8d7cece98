"""The diffusion model's shapes, padding, warm start, and that LLaDA-style training learns a sequential pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.gbr.config import GBRConfig
from reaseq.gbr.infer import infer
from reaseq.gbr.model import PAD, MaskedDiffusionLM, map_embeddings, mask_token
from reaseq.gbr.train import (
    build_windows,
    collaborative_init,
    load_gbr,
    mask_tokens,
    prompt_response,
    train_gbr,
    validation_loss,
)
from tests.gbr.conftest import CHAIN_LEN, chain_item, tiny_gbr

N_ITEMS = 40


def test_forward_shapes_and_vocabulary() -> None:
    model = MaskedDiffusionLM(N_ITEMS, tiny_gbr())
    tokens = torch.tensor([[1, 2, mask_token(N_ITEMS), PAD], [5, mask_token(N_ITEMS), mask_token(N_ITEMS), 7]])
    logits = model(tokens)
    assert mask_token(N_ITEMS) == N_ITEMS + 1
    assert model.token_embedding.num_embeddings == N_ITEMS + 2
    assert logits.shape == (2, 4, N_ITEMS + 1)  # PAD + items; MASK is never an output
    assert torch.isfinite(logits).all()


def test_padding_is_never_attended_to() -> None:
    torch.manual_seed(0)
    model = MaskedDiffusionLM(N_ITEMS, tiny_gbr()).eval()
    tokens = torch.tensor([[3, 4, mask_token(N_ITEMS), PAD, PAD]])
    other = tokens.clone()
    other[0, 3:] = torch.tensor([9, 10])  # different content where the mask says padding
    pad_mask = torch.tensor([[False, False, False, True, True]])
    with torch.no_grad():
        assert torch.allclose(model(tokens, pad_mask)[0, :3], model(other, pad_mask)[0, :3], atol=1e-6)
        assert not torch.allclose(model(tokens)[0, :3], model(other)[0, :3], atol=1e-6)  # unmasked, they would be seen


@pytest.mark.parametrize("width", [16, 32, 48])
def test_warm_start_keeps_the_geometry_of_the_given_vectors(width: int) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, width)) * 5.0
    vectors = np.vstack([np.zeros((1, width)), centres[np.arange(N_ITEMS) % 4] + rng.normal(size=(N_ITEMS, width)) * 0.1])
    model = MaskedDiffusionLM(N_ITEMS, tiny_gbr(), init_embeddings=vectors)
    emb = model.token_embedding.weight.detach()[1 : N_ITEMS + 1]
    emb = emb / emb.norm(dim=1, keepdim=True)
    nearest = (emb @ emb.T).fill_diagonal_(-2.0).argmax(dim=1).numpy()
    assert (nearest % 4 == np.arange(N_ITEMS) % 4).all()  # each item's nearest neighbour shares its cluster
    assert float(model.token_embedding.weight[PAD].detach().abs().sum()) == 0.0
    mapped = map_embeddings(vectors, 32)[1:]
    assert mapped[:, : min(width, 32)].std() == pytest.approx(0.02, rel=1e-3)
    assert not mapped[:, min(width, 32) :].any()


def test_warm_start_rejects_a_wrong_shape() -> None:
    with pytest.raises(InputError, match="init_embeddings"):
        MaskedDiffusionLM(N_ITEMS, tiny_gbr(), init_embeddings=np.zeros((N_ITEMS, 8)))
    with pytest.raises(InputError, match="NaN"):
        MaskedDiffusionLM(N_ITEMS, tiny_gbr(), init_embeddings=np.full((N_ITEMS + 1, 8), np.nan))


def test_config_rejects_slots_that_do_not_fit() -> None:
    with pytest.raises(ValidationError, match="k"):
        GBRConfig(max_len=10, k=10)
    with pytest.raises(ValidationError, match="extra"):
        GBRConfig(unknown=1)


def test_masking_touches_only_maskable_tokens_at_rate_t() -> None:
    tokens = torch.randint(1, N_ITEMS + 1, (400, 50))
    tokens[:, 40:] = PAD
    noisy, masked, t = mask_tokens(tokens, tokens != PAD, mask_token(N_ITEMS), 1e-3, torch.Generator().manual_seed(0))
    assert not masked[:, 40:].any()
    assert (noisy[masked] == mask_token(N_ITEMS)).all() and (noisy[~masked] == tokens[~masked]).all()
    assert ((t > 1e-3) & (t <= 1.0)).all()
    rate = masked[:, :40].float().mean(dim=1)
    assert torch.corrcoef(torch.stack([rate, t]))[0, 1] > 0.95


def test_prompt_response_moves_response_items_last_and_only_they_may_be_masked() -> None:
    cfg = tiny_gbr(response_frac=1.0, max_len=6)
    response_items = torch.zeros(N_ITEMS + 1, dtype=torch.bool)
    response_items[[20, 21, 22]] = True
    tokens = torch.tensor([[20, 3, 21, 4, 5, PAD], [1, 2, 3, 4, PAD, PAD]])
    out, maskable = prompt_response(tokens, cfg, response_items, torch.Generator().manual_seed(0))
    assert out[0].tolist() == [3, 4, 5, 20, 21, PAD]
    assert maskable[0].tolist() == [False, False, False, True, True, False]
    assert maskable[1].tolist() == [True, True, True, True, False, False]  # no response item: an ordinary row
    suffix, maskable = prompt_response(tokens, cfg, None, torch.Generator().manual_seed(0))
    assert torch.equal(suffix, tokens)
    assert maskable[0, -2].item() and not maskable[0, 0].item()  # the response is a suffix of at most k items


def test_windows_cover_the_allowed_rows_only(chains: SequenceData) -> None:
    rows = np.zeros(len(chains.items), dtype=bool)
    rows[chains.offsets[0] : chains.offsets[0] + 3] = True  # user 0: first three events
    rows[chains.offsets[1] : chains.offsets[2]] = True  # user 1: everything
    windows = build_windows(chains, rows, tiny_gbr(max_len=4))
    got = sorted(tuple(windows.items[s:e].tolist()) for s, e in zip(windows.start.tolist(), windows.end.tolist()))
    user0, user1 = chains.items[chains.offsets[0] : chains.offsets[0] + 3], chains.items[chains.offsets[1] : chains.offsets[2]]
    assert got == sorted([tuple(user0), tuple(user1[-4:]), tuple(user1[:2])])  # newest window first, then the older rest
    assert windows.is_valid.sum() >= 1
    with pytest.raises(InputError, match="train_rows"):
        build_windows(chains, np.ones(3, dtype=bool), tiny_gbr())


# Histories of three consecutive items of each chain, from every start: a model that learnt the chains continues them.
CHAIN_HISTORIES = [np.array([chain_item(c, s), chain_item(c, s + 1), chain_item(c, s + 2)]) for c in range(5) for s in range(CHAIN_LEN)]


def chain_continuations(model: MaskedDiffusionLM) -> np.ndarray:
    """Two inferred items [H, 2] after each of CHAIN_HISTORIES."""
    return infer(model, CHAIN_HISTORIES, k=2, steps=2)[0]


def same_chain_share(items: np.ndarray) -> float:
    """Share of inferred items on the chain of their history."""
    chain_of_history = np.array([(h[0] - 1) // CHAIN_LEN for h in CHAIN_HISTORIES])[:, None]
    return float(((items - 1) // CHAIN_LEN == chain_of_history).mean())


def test_training_lowers_the_loss_and_learns_the_chains(chains: SequenceData, tmp_path: Path) -> None:
    cfg = tiny_gbr(epochs=25)
    rows = np.ones(len(chains.items), dtype=bool)
    torch.manual_seed(cfg.seed)
    untrained = validation_loss(MaskedDiffusionLM(chains.n_items, cfg), build_windows(chains, rows, cfg), cfg)
    model, record = train_gbr(chains, rows, cfg, checkpoint=tmp_path / "gbr.pt")
    assert min(record.curves["valid_loss"]) < 0.7 * untrained
    assert record.fit.best_epoch > 0  # later rounds improved on the first one
    assert record.tokens_per_s > 0 and record.train_windows > record.valid_windows > 0

    items = chain_continuations(model)
    assert same_chain_share(items) > 0.8  # chance is about 5 / 37

    loaded, loaded_cfg = load_gbr(tmp_path / "gbr.pt")
    assert loaded_cfg == cfg
    assert np.array_equal(chain_continuations(loaded), items)


def test_collaborative_init_places_co_used_items_together(chains: SequenceData) -> None:
    vectors = collaborative_init(chains, np.ones(len(chains.items), dtype=bool), 8, seed=0)
    assert vectors.shape == (chains.n_items + 1, 8)
    emb = vectors[1:] / np.linalg.norm(vectors[1:], axis=1, keepdims=True)
    nearest = (emb @ emb.T - 2 * np.eye(chains.n_items)).argmax(axis=1)
    assert (nearest // CHAIN_LEN == np.arange(chains.n_items) // CHAIN_LEN).mean() > 0.9


def test_popularity_bias_makes_an_untrained_model_propose_frequent_items(chains: SequenceData) -> None:
    rows = np.ones(len(chains.items), dtype=bool)
    rows[np.isin(chains.items, [chain_item(4, s) for s in range(CHAIN_LEN)])] = False  # chain 4 unseen in training
    model, _ = train_gbr(chains, rows, tiny_gbr(epochs=1, lr=1e-9, popularity_bias=True))
    counts = np.bincount(chains.items[rows], minlength=chains.n_items + 1)
    items, _ = infer(model, [np.array([], dtype=np.int64)] * 3, k=4, steps=1)
    assert (counts[items] > 0).all()  # never an item without training events
    plain, _ = train_gbr(chains, rows, tiny_gbr(epochs=1, lr=1e-9))
    assert float(plain.output_bias.detach().abs().max()) < 1e-6  # without the option the bias starts at zero


def test_a_select_score_replaces_the_validation_loss_for_choosing_the_round(chains: SequenceData) -> None:
    scores = iter([0.1, 0.7, 0.3, 0.2])
    seen: list[MaskedDiffusionLM] = []

    def select(model: MaskedDiffusionLM) -> float:
        seen.append(model)
        assert not model.training  # scored like a validation pass
        return next(scores)

    model, record = train_gbr(chains, np.ones(len(chains.items), dtype=bool), tiny_gbr(epochs=4, patience=4), select=select)
    assert len(seen) == 4 and all(m is model for m in seen)
    assert record.fit.best_epoch == 1 and record.curves["valid_score"] == [0.1, 0.7, 0.3, 0.2] and "valid_loss" not in record.curves


def test_ema_weights_are_the_ones_selected_and_returned(chains: SequenceData) -> None:
    rows = np.ones(len(chains.items), dtype=bool)
    torch.manual_seed(0)
    start = MaskedDiffusionLM(chains.n_items, tiny_gbr()).state_dict()  # train_gbr seeds the same start
    frozen, _ = train_gbr(chains, rows, tiny_gbr(epochs=3, ema_decay=0.999999))
    moved, _ = train_gbr(chains, rows, tiny_gbr(epochs=3))
    drift = lambda model: max(float((model.state_dict()[name] - start[name]).abs().max()) for name in start)
    assert drift(frozen) < 1e-3 < drift(moved)  # an average that barely follows training stays at the start

    model, record = train_gbr(chains, rows, tiny_gbr(epochs=25, ema_decay=0.9))
    assert same_chain_share(chain_continuations(model)) > 0.8 and record.fit.best_epoch > 0
