"""Co-occurrence item vectors: PPMI + SVD over the given training rows only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError
from reaseq.represent.cooccurrence import cooccurrence_embeddings, ppmi_matrix
from tests.represent.helpers import grouped_sequences, sequence_data

N_GROUPS, PER_GROUP = 3, 10
N_ITEMS = N_GROUPS * PER_GROUP + 2  # the last two items are never consumed in training


def _data() -> SequenceData:
    return sequence_data(grouped_sequences(30, N_GROUPS, PER_GROUP, 8, seed=0), N_ITEMS)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_shape_padding_and_unseen_items_are_zero() -> None:
    data = _data()
    vectors = cooccurrence_embeddings(data, np.ones(len(data.items), bool), dim=8, window=3, seed=0)
    assert vectors.shape == (N_ITEMS + 1, 8) and vectors.dtype == np.float32
    assert not vectors[0].any() and not vectors[-2:].any()
    assert (np.linalg.norm(vectors[1 : N_GROUPS * PER_GROUP + 1], axis=1) > 0).all()


def test_items_that_cooccur_are_closer() -> None:
    data = _data()
    vectors = _unit(cooccurrence_embeddings(data, np.ones(len(data.items), bool), dim=8, window=3, seed=0)[1 : N_GROUPS * PER_GROUP + 1])
    sims = vectors @ vectors.T
    group = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    same = group[:, None] == group[None, :]
    off_diagonal = ~np.eye(len(group), dtype=bool)
    assert sims[same & off_diagonal].mean() > sims[~same].mean() + 0.5


def test_events_outside_the_rows_change_nothing() -> None:
    data = _data()
    rng = np.random.default_rng(1)
    rows = rng.random(len(data.items)) < 0.7
    items = data.items.copy()
    items[~rows] = rng.integers(1, N_ITEMS + 1, size=(~rows).sum())  # rewrite every excluded event
    changed = replace(data, items=items)
    base = cooccurrence_embeddings(data, rows, dim=6, window=2, seed=0)
    np.testing.assert_array_equal(base, cooccurrence_embeddings(changed, rows, dim=6, window=2, seed=0))
    np.testing.assert_array_equal(base, cooccurrence_embeddings(data, np.flatnonzero(rows), dim=6, window=2, seed=0))
    # ...while an event inside the rows does change the vectors.
    items = data.items.copy()
    first_kept = np.flatnonzero(rows)[0]
    items[first_kept] = N_ITEMS
    inside = replace(data, items=items)
    assert not np.array_equal(base, cooccurrence_embeddings(inside, rows, dim=6, window=2, seed=0))


def test_window_limits_pairs() -> None:
    data = sequence_data([[1, 2, 3, 4]], 4)
    rows = np.ones(4, bool)
    assert ppmi_matrix(data, rows, window=1)[1, 3] == 0  # two steps apart
    assert ppmi_matrix(data, rows, window=2)[1, 3] > 0


def test_bad_rows_raise_input_error() -> None:
    data = _data()
    with pytest.raises(InputError, match="train_rows"):
        cooccurrence_embeddings(data, np.ones(3, bool), dim=4, window=2, seed=0)
    with pytest.raises(InputError, match="train_rows"):
        cooccurrence_embeddings(data, np.array([len(data.items)]), dim=4, window=2, seed=0)
