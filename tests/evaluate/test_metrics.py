"""The evaluator's metrics against scikit-learn and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from reaseq.evaluate.metrics import auc, ctr_metrics, gauc, logloss, target_ranks, topk_metrics


def _tied_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 2, size=n)
    # Few distinct values so that many scores tie, across and within classes.
    scores = rng.integers(0, 7, size=n) / 7.0
    return labels, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels, scores = _tied_data(rng, 2000)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    continuous = rng.random(2000)
    assert auc(labels, continuous) == pytest.approx(roc_auc_score(labels, continuous), abs=1e-12)


def test_auc_edge_cases() -> None:
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 1, 1], [0.1, 0.2, 0.3]) == 1.0
    assert math.isnan(auc([1, 1], [0.1, 0.2]))
    with pytest.raises(ValueError):
        auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        auc([0, 1], [0.1, float("nan")])


def _gauc_reference(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    total, weight = 0.0, 0
    for user in np.unique(users):
        mask = users == user
        if labels[mask].min() == labels[mask].max():
            continue
        total += roc_auc_score(labels[mask], scores[mask]) * mask.sum()
        weight += mask.sum()
    return total / weight


@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_matches_per_user_sklearn_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3000
    users = rng.integers(0, 60, size=n)
    labels, scores = _tied_data(rng, n)
    # One user whose labels are all positive and one with a single impression: both must be skipped.
    users = np.concatenate([users, [1000] * 5, [1001]])
    labels = np.concatenate([labels, [1] * 5, [0]])
    scores = np.concatenate([scores, rng.random(6)])
    assert gauc(users, labels, scores) == pytest.approx(_gauc_reference(users, labels, scores), abs=1e-12)


def test_gauc_with_string_users_and_shuffled_order() -> None:
    rng = np.random.default_rng(3)
    users = rng.choice(np.array(["ann", "bob", "cy"]), size=500)
    labels, scores = _tied_data(rng, 500)
    expected = _gauc_reference(users, labels, scores)
    order = rng.permutation(500)
    assert gauc(users[order], labels[order], scores[order]) == pytest.approx(expected, abs=1e-12)


def test_gauc_all_single_class_is_nan() -> None:
    assert math.isnan(gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3]))


def test_logloss_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=1000)
    probs = rng.uniform(0.01, 0.99, size=1000)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-10)
    # Clipping keeps a certain-and-wrong prediction finite.
    assert math.isfinite(logloss([1], [0.0], eps=1e-7))
    assert logloss([1], [0.0], eps=1e-7) == pytest.approx(-math.log(1e-7))


def test_ctr_metrics_keys() -> None:
    result = ctr_metrics([1, 1, 2, 2], [0, 1, 1, 0], [0.2, 0.8, 0.4, 0.6])
    assert set(result) == {"auc", "gauc", "logloss", "n", "pos_rate"}
    assert result["n"] == 4 and result["pos_rate"] == 0.5
    assert result["gauc"] == pytest.approx(0.5)
    assert result["auc"] == pytest.approx(roc_auc_score([0, 1, 1, 0], [0.2, 0.8, 0.4, 0.6]))


def _brute_force_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: list[list[int]]) -> list[int]:
    ranks = []
    for row, target in enumerate(targets.tolist()):
        target_score = scores[row, target].item()
        count = 0
        for item in range(1, scores.shape[1]):
            if item == target or item in exclude[row]:
                continue
            count += int(scores[row, item].item() > target_score)
        ranks.append(count)
    return ranks


def test_target_ranks_matches_brute_force_with_exclusion_and_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    batch, n_items = 16, 40
    scores = torch.randint(0, 6, (batch, n_items), generator=generator).float()  # many ties
    scores[:, 0] = 100.0  # the padding column scores highest and must still be ignored
    targets = torch.randint(1, n_items, (batch,), generator=generator)
    exclude = [torch.randint(1, n_items, (int(k),), generator=generator).tolist() for k in torch.randint(0, 8, (batch,))]
    exclude[0].append(int(targets[0]))  # a target in its own exclusion list still counts
    expected = _brute_force_ranks(scores, targets, exclude)

    assert target_ranks(scores, targets, exclude).tolist() == expected
    mask = torch.zeros(batch, n_items, dtype=torch.bool)
    for row, items in enumerate(exclude):
        mask[row, items] = True
    assert target_ranks(scores, targets, mask).tolist() == expected
    padded = torch.nn.utils.rnn.pad_sequence([torch.tensor(e, dtype=torch.long) for e in exclude], batch_first=True)
    assert target_ranks(scores, targets, padded).tolist() == expected
    assert target_ranks(scores, targets).tolist() == _brute_force_ranks(scores, targets, [[] for _ in range(batch)])


def test_target_ranks_ties() -> None:
    scores = torch.tensor([[9.0, 1.0, 1.0, 1.0, 2.0]])
    targets = torch.tensor([2])
    assert target_ranks(scores, targets).tolist() == [1]
    assert target_ranks(scores, targets, ties="pessimistic").tolist() == [3]
    with pytest.raises(ValueError):
        target_ranks(scores, torch.tensor([0]))


def test_topk_metrics_hand_computed() -> None:
    ranks = np.array([0, 1, 9, 10, 25])
    result = topk_metrics(ranks, [1, 10])
    assert result["hr@1"] == pytest.approx(1 / 5)
    assert result["hr@10"] == pytest.approx(3 / 5)
    assert result["ndcg@1"] == pytest.approx(1 / 5)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert result["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)
    assert result["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 10 + 1 / 11 + 1 / 26) / 5)
    assert result["n"] == 5
    assert set(result) == {"hr@1", "hr@10", "ndcg@1", "ndcg@10", "mrr@1", "mrr@10", "mrr", "n"}
