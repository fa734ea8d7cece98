"""InfoNCE alignment of text vectors with collaborative vectors, the popularity gate, projection save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reaseq.errors import InputError
from reaseq.represent.align import Alignment, load_projection, neighbour_overlap, popularity_gate, save_projection, train_alignment
from reaseq.represent.config import AlignConfig
from tests.represent.helpers import clustered_vectors

N, DC, NUISANCE = 400, 16, 16
N_COLD, N_NO_TEXT = 20, 5
CFG = AlignConfig(epochs=30, batch_size=64, hidden=64, lr=3e-3, holdout_frac=0.2, progress=False)


def rotated_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text = a random rotation of [collaborative vector, loud nuisance] plus noise: raw cosine neighbours are mostly nuisance."""
    rng = np.random.default_rng(seed)
    collab = clustered_vectors(N + 1, DC, 20, 0.5, seed)
    nuisance = 2.0 * rng.normal(size=(N + 1, NUISANCE))
    rotation, _ = np.linalg.qr(rng.normal(size=(DC + NUISANCE, DC + NUISANCE)))
    text = np.concatenate([collab, nuisance], 1) @ rotation + 0.05 * rng.normal(size=(N + 1, DC + NUISANCE))
    counts = rng.integers(1, 50, size=N + 1)
    counts[-N_COLD:] = 0  # cold items: text, no interactions
    text[1 : 1 + N_NO_TEXT] = 0.0  # items without knowledge
    collab[0], text[0], counts[0] = 0.0, 0.0, 0
    return text.astype(np.float32), collab.astype(np.float32), counts


@pytest.fixture(scope="module")
def fitted() -> tuple[Alignment, np.ndarray, np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    text, collab, counts = rotated_case()
    return train_alignment(text, collab, counts, CFG), text, collab, counts


def test_alignment_raises_neighbour_overlap_on_train_and_holdout(fitted: tuple) -> None:
    alignment, *_ = fitted
    report = alignment.report
    for group in ("overlap_train", "overlap_holdout"):
        assert report[group]["aligned"] > report[group]["raw"] + 0.3, report[group]
    assert report["n_holdout"] == round(0.2 * (N - N_COLD - N_NO_TEXT))
    assert report["final_loss"] < 0.5 * report["chance_loss"]


def test_holdout_items_were_not_trained_on(fitted: tuple) -> None:
    alignment, _, _, counts = fitted
    assert not set(alignment.train_items) & set(alignment.holdout_items)
    assert (counts[alignment.train_items] > 0).all()


def test_cold_items_are_projected_and_textless_items_are_zero(fitted: tuple) -> None:
    alignment, _, collab, _ = fitted
    aligned = alignment.aligned
    assert aligned.shape == (N + 1, DC) and aligned.dtype == np.float32
    assert not aligned[0].any() and not aligned[1 : 1 + N_NO_TEXT].any()
    cold = aligned[-N_COLD:]
    assert (np.linalg.norm(cold, axis=1) > 0).all()
    # Cold items land near their own collaborative vectors (which the alignment never saw).
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    cos_own = (unit(cold) * unit(collab[-N_COLD:])).sum(1)
    cos_other = (unit(cold) * unit(np.roll(collab[-N_COLD:], 1, axis=0))).sum(1)
    assert cos_own.mean() > cos_other.mean() + 0.3
    # Output magnitude is that of a collaborative vector, so it can be added to an ID embedding.
    assert np.linalg.norm(cold, axis=1).mean() == pytest.approx(np.linalg.norm(collab[alignment.train_items], axis=1).mean(), rel=1e-4)


def test_gate_is_monotone_in_count_and_half_at_pivot() -> None:
    counts = np.array([0, 0, 1, 5, 20, 100, 10_000])
    gate = popularity_gate(counts, pivot=20.0)
    assert gate[0] == 0 and gate[1] == 0
    assert (np.diff(gate[1:]) > 0).all()
    assert gate[4] == pytest.approx(0.5)
    assert ((gate >= 0) & (gate <= 1)).all()


def test_alignment_gate_uses_counts(fitted: tuple) -> None:
    alignment, _, _, counts = fitted
    np.testing.assert_allclose(alignment.gate, popularity_gate(counts, CFG.gate_pivot))


def test_projection_save_load_round_trip(fitted: tuple, tmp_path: Path) -> None:
    alignment, text, _, _ = fitted
    path = save_projection(alignment.projection, tmp_path / "projection.pt")
    loaded, basis = load_projection(path)
    assert basis is None
    with torch.no_grad():
        out = loaded(torch.from_numpy(text[-N_COLD:])).numpy()
    np.testing.assert_allclose(out, alignment.aligned[-N_COLD:], atol=1e-6)


def test_corrupt_projection_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "projection.pt"
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="projection"):
        load_projection(path)


def test_smaller_dim_reduces_collaborative_space_and_wider_dim_is_an_error() -> None:
    text, collab, counts = rotated_case()
    small = train_alignment(text, collab, counts, CFG.model_copy(update={"dim": 8, "epochs": 2}))
    assert small.aligned.shape == (N + 1, 8) and small.collab_basis is not None and small.collab_basis.shape == (8, DC)
    with pytest.raises(InputError, match="align.dim"):
        train_alignment(text, collab, counts, CFG.model_copy(update={"dim": DC + 1}))


def test_neighbour_overlap_is_one_for_identical_spaces_and_scale_free() -> None:
    vectors = clustered_vectors(50, 4, 5, 0.3, 1)
    items = np.arange(50)
    assert neighbour_overlap(vectors, 3.0 * vectors, items, items, 5) == 1.0
    shuffled = vectors[np.random.default_rng(0).permutation(50)]
    assert neighbour_overlap(vectors, shuffled, items, items, 5) < 0.5


def test_too_few_items_raise_input_error() -> None:
    text, collab, counts = rotated_case()
    counts = np.zeros_like(counts)
    counts[N] = 3
    with pytest.raises(InputError, match="at least two"):
        train_alignment(text, collab, counts, CFG)
