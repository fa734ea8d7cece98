"""Baseline generators produce valid lists, and GBR learns a cross-domain pattern popularity cannot see."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

from reaseq.config import ModelConfig, TrainConfig
from reaseq.data.dataset import SequenceData
from reaseq.gbr.baselines import (
    ease_lists,
    ease_weights,
    generate_autoregressive,
    itemknn_lists,
    popularity_lists,
    prompt_response_windows,
    select_ease_l2,
    split_users,
    top_k_admissible,
    train_sasrec_generator,
)
from reaseq.gbr.beyond_log import build_beyond_log, evaluate_lists
from reaseq.gbr.config import BeyondLogConfig
from reaseq.errors import InputError
from reaseq.gbr.infer import forbidden_items, generation_quality, infer
from reaseq.gbr.train import (
    build_windows,
    collaborative_init,
    train_gbr,
)
from tests.gbr.conftest import CHAIN_LEN, tiny_gbr

OFF = ["Horror", "Sci-Fi"]
K = 3


@pytest.fixture
def split(mixed_chains: SequenceData):
    return build_beyond_log(mixed_chains, BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.3, k=K))


def assert_valid_lists(items: np.ndarray, confidence: np.ndarray | None, split, n_items: int) -> None:
    assert items.shape == (len(split.target_users), K)
    assert generation_quality(items, split.histories, split.allowed, n_items) == {"validity": 1.0, "duplicate_rate": 0.0, "novelty": 1.0}
    if confidence is not None:
        assert ((confidence > 0) & (confidence <= 1)).all()


def test_top_k_admissible_skips_forbidden_items() -> None:
    scores = np.array([[0.0, 5.0, 4.0, 3.0, 2.0]])
    forbid = np.array([[True, True, False, False, False]])
    items, got = top_k_admissible(scores, forbid, 2)
    assert items.tolist() == [[2, 3]] and got.tolist() == [[4.0, 3.0]]


def test_popularity_ranks_visible_counts_among_candidates(mixed_chains: SequenceData, split) -> None:
    items, _ = popularity_lists(mixed_chains, split.visible_rows, split.histories, split.allowed, K)
    assert_valid_lists(items, None, split, mixed_chains.n_items)
    counts = np.bincount(mixed_chains.items[split.visible_rows], minlength=mixed_chains.n_items + 1) * split.allowed
    assert np.array_equal(np.sort(counts[items[0]])[::-1], np.sort(counts)[::-1][:K])


def test_itemknn_follows_co_occurrence(mixed_chains: SequenceData, split) -> None:
    items, _ = itemknn_lists(mixed_chains, split.visible_rows, split.histories, split.allowed, K)
    assert_valid_lists(items, None, split, mixed_chains.n_items)
    # Users walk the same offsets in both of their chains, so co-occurrence points at the right offsets.
    offset = (items - 1) % CHAIN_LEN
    seen_offsets = [set(((np.asarray(h) - 1) % CHAIN_LEN).tolist()) for h in split.histories]
    assert np.mean([o in s for row, s in zip(offset, seen_offsets) for o in row]) > 0.9
    popular, _ = popularity_lists(mixed_chains, split.visible_rows, split.histories, split.allowed, K)
    assert evaluate_lists(items, split, K)[f"recall@{K}"] > 1.5 * evaluate_lists(popular, split, K)[f"recall@{K}"]


def test_ease_weights_solve_the_constrained_ridge_problem() -> None:
    matrix = sparse.random(30, 6, density=0.4, random_state=0, format="csr")
    matrix.data[:] = 1.0
    weights = ease_weights(matrix, l2=2.0)
    assert np.allclose(np.diag(weights), 0.0)
    # Each column j is the ridge regression of item j on the other items (Steck's closed form, without the constraint's multiplier).
    dense = matrix.toarray()
    for j in range(6):
        others = [i for i in range(6) if i != j]
        design = dense[:, others]
        expected = np.linalg.solve(design.T @ design + 2.0 * np.eye(5), design.T @ dense[:, j])
        assert np.allclose(weights[others, j], expected)


def test_ease_follows_co_occurrence_and_its_l2_is_chosen_without_hidden_items(mixed_chains: SequenceData, split) -> None:
    cfg = BeyondLogConfig(off_platform_genres=OFF, target_user_frac=0.3, k=K)
    l2, recall = select_ease_l2(mixed_chains, split, cfg, [1.0, 10.0, 1e6], valid_user_frac=0.2)
    assert set(recall) == {1.0, 10.0, 1e6} and recall[l2] == max(recall.values())
    items, _ = ease_lists(mixed_chains, split.visible_rows, split.histories, split.allowed, K, l2)
    assert_valid_lists(items, None, split, mixed_chains.n_items)
    popular, _ = popularity_lists(mixed_chains, split.visible_rows, split.histories, split.allowed, K)
    assert evaluate_lists(items, split, K)[f"recall@{K}"] > 1.5 * evaluate_lists(popular, split, K)[f"recall@{K}"]
    # The hidden items cannot move the choice: the validation split only ever sees the visible rows.
    changed = mixed_chains.subset(np.ones(len(mixed_chains.items), dtype=bool))
    changed.items[~split.visible_rows] = 1 + (changed.items[~split.visible_rows] % mixed_chains.n_items)
    assert select_ease_l2(changed, split, cfg, [1.0, 10.0, 1e6], valid_user_frac=0.2) == (l2, recall)


def test_sasrec_generator_trains_on_the_visible_corpus_and_generates_valid_lists(mixed_chains: SequenceData, split) -> None:
    model_cfg = ModelConfig(name="sasrec", embedding_dim=16, num_layers=1, num_heads=2, dropout=0.0)
    train_cfg = TrainConfig(epochs=3, batch_size=256, lr=0.01, patience=3, num_threads=1, progress=False)
    generator = train_sasrec_generator(mixed_chains, split.visible_rows, model_cfg, train_cfg, max_len=6, seed=0, valid_user_frac=0.1, init_embeddings=collaborative_init(mixed_chains, split.visible_rows, 16, 0))
    assert generator.fit.epochs_run == 3 and generator.fit.curves["valid"][-1] > generator.fit.curves["valid"][0]
    items, confidence = generate_autoregressive(generator, split.histories, K, split.allowed)
    assert_valid_lists(items, confidence, split, mixed_chains.n_items)


def test_autoregressive_rounds_run_from_plain_top_k_to_greedy(mixed_chains: SequenceData, split) -> None:
    model_cfg = ModelConfig(name="sasrec", embedding_dim=16, num_layers=1, num_heads=2, dropout=0.0)
    train_cfg = TrainConfig(epochs=2, batch_size=256, lr=0.01, patience=2, num_threads=1, progress=False)
    generator = train_sasrec_generator(mixed_chains, split.visible_rows, model_cfg, train_cfg, max_len=6, seed=0, valid_user_frac=0.1)
    histories = split.histories
    # One round is SASRec's plain top-K: the K best admissible items of the first distribution, best first.
    one, one_conf = generate_autoregressive(generator, histories, K, split.allowed, steps=1)
    with torch.no_grad():
        seq = torch.zeros((len(histories), 6), dtype=torch.long)
        for row, history in enumerate(histories):
            recent = torch.as_tensor(np.asarray(history, dtype=np.int64)[-6:])
            seq[row, 6 - len(recent) :] = recent
        scores = torch.softmax(generator.model(seq), dim=-1).numpy()
    forbid = forbidden_items(histories, mixed_chains.n_items, split.allowed, exclude_seen=True).numpy()
    expected, _ = top_k_admissible(scores, forbid, K)
    assert np.array_equal(one, expected)
    assert np.all(np.diff(one_conf, axis=1) <= 1e-6)  # most probable first
    # K rounds is greedy decoding (the default); every schedule gives valid lists, and only the rounds differ.
    greedy, _ = generate_autoregressive(generator, histories, K, split.allowed)
    assert np.array_equal(greedy, generate_autoregressive(generator, histories, K, split.allowed, steps=K)[0])
    assert np.array_equal(greedy[:, 0], one[:, 0])  # the first pick sees the same history either way
    for steps in range(1, K + 1):
        items, confidence = generate_autoregressive(generator, histories, K, split.allowed, steps=steps)
        assert_valid_lists(items, confidence, split, mixed_chains.n_items)
    for bad in (0, K + 1):
        with pytest.raises(InputError, match="steps"):
            generate_autoregressive(generator, histories, K, split.allowed, steps=bad)


def test_prompt_response_windows_move_the_response_last_in_time_order() -> None:
    response = torch.tensor([False, False, True, False, True, True])  # items 2, 4, 5 are the response kind
    seq = torch.tensor([[0, 0, 2, 1, 4, 3], [5, 1, 2, 3, 4, 1]])
    rewritten = prompt_response_windows(seq, response, 1.0, torch.Generator().manual_seed(0))
    assert rewritten.tolist() == [[0, 0, 1, 3, 2, 4], [1, 3, 1, 5, 2, 4]]  # padding stays first
    assert torch.equal(prompt_response_windows(seq, response, 0.0, torch.Generator().manual_seed(0)), seq)
    half = prompt_response_windows(seq.repeat(200, 1), response, 0.5, torch.Generator().manual_seed(0))
    assert 0.3 < (half != seq.repeat(200, 1)).any(dim=1).float().mean() < 0.7


def test_sasrec_generator_trains_on_prompt_response_rows_only_when_asked(mixed_chains: SequenceData, split, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(seq: torch.Tensor, *args: object) -> torch.Tensor:
        seen.append((seq, prompt_response_windows(seq, *args)))  # type: ignore[arg-type]
        return seen[-1][1]

    monkeypatch.setattr("reaseq.gbr.baselines.prompt_response_windows", recording)
    model_cfg = ModelConfig(name="sasrec", embedding_dim=16, num_layers=1, num_heads=2, dropout=0.0)
    train_cfg = TrainConfig(epochs=1, batch_size=256, lr=0.01, patience=1, num_threads=1, progress=False)
    train_sasrec_generator(mixed_chains, split.visible_rows, model_cfg, train_cfg, max_len=6, seed=0, valid_user_frac=0.1)
    assert not seen
    train_sasrec_generator(mixed_chains, split.visible_rows, model_cfg, train_cfg, max_len=6, seed=0, valid_user_frac=0.1, response_items=split.off_platform, response_frac=0.5)
    assert seen and all(before.shape[1] == 7 for before, _ in seen)  # every training batch of windows (max_len + 1)
    # The rewrite only reorders a window: it never adds an item (so no hidden event) nor drops one.
    assert all(torch.equal(before.sort(dim=1).values, after.sort(dim=1).values) for before, after in seen)
    assert any(not torch.equal(before, after) for before, after in seen)


def test_sasrec_generator_can_keep_the_round_with_the_best_task_score(mixed_chains: SequenceData, split) -> None:
    scores = iter([0.2, 0.1, 0.6])
    model_cfg = ModelConfig(name="sasrec", embedding_dim=16, num_layers=1, num_heads=2, dropout=0.0)
    train_cfg = TrainConfig(epochs=3, batch_size=256, lr=0.01, patience=3, num_threads=1, progress=False)
    generator = train_sasrec_generator(mixed_chains, split.visible_rows, model_cfg, train_cfg, max_len=6, seed=0, valid_user_frac=0.1, select=lambda g: next(scores))
    assert generator.fit.best_epoch == 2 and generator.fit.curves["valid"] == [0.2, 0.1, 0.6]


def test_gbr_and_sasrec_hold_out_the_same_validation_users(mixed_chains: SequenceData, split) -> None:
    cfg = tiny_gbr()
    windows = build_windows(mixed_chains, split.visible_rows, cfg)
    visible = mixed_chains.subset(split.visible_rows)
    gbr_valid = np.unique(np.searchsorted(visible.offsets, windows.start[windows.is_valid].numpy(), side="right") - 1)
    _, sasrec_valid = split_users(mixed_chains, split.visible_rows, cfg.valid_user_frac, cfg.seed)
    assert np.array_equal(gbr_valid, sasrec_valid)


def test_gbr_infers_hidden_cross_domain_behaviour_better_than_popularity(mixed_chains: SequenceData, split) -> None:
    model, _ = train_gbr(mixed_chains, split.visible_rows, tiny_gbr(k=K, response_frac=0.5), response_items=split.off_platform)
    items, confidence = infer(model, split.histories, K, steps=K, allowed=split.allowed)
    assert_valid_lists(items, confidence, split, mixed_chains.n_items)
    popular, _ = popularity_lists(mixed_chains, split.visible_rows, split.histories, split.allowed, K)
    gbr, pop = evaluate_lists(items, split, K), evaluate_lists(popular, split, K)
    assert gbr[f"recall@{K}"] > 2 * pop[f"recall@{K}"]
