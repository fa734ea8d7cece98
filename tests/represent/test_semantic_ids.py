"""Semantic IDs: RQ-KMeans and RQ-VAE codes, the dedup level and the tokenizer report."""

from __future__ import annotations

import numpy as np
import pytest

from reaseq.represent.config import SemanticIdConfig
from reaseq.represent.semantic_ids import code_stats, collision_rate, dedup_column, semantic_ids
from tests.represent.helpers import clustered_vectors

CFG = SemanticIdConfig(levels=2, codes=8, progress=False)


def test_rq_kmeans_codes_are_unique_with_dedup() -> None:
    vectors = clustered_vectors(300, 8, 6, 0.2, 0)
    vectors[10:15] = vectors[9]  # exact duplicates must collide before dedup
    ids = semantic_ids(vectors, CFG)
    assert ids.codes.shape == (300, 3) and ids.codes.dtype == np.int64
    assert len(np.unique(ids.codes, axis=0)) == 300
    assert ids.report["collision_rate_after_dedup"] == 0.0
    assert ids.report["collision_rate"] > 0
    assert ids.report["collision_rate"] == pytest.approx(collision_rate(ids.codes[:, :2]))
    assert ((ids.codes[:, :2] >= 0) & (ids.codes[:, :2] < CFG.codes)).all()
    assert (ids.codes[10:15, :2] == ids.codes[9, :2]).all()
    assert ids.report["max_dedup_index"] == ids.codes[:, 2].max() >= 5


def test_residual_levels_refine_the_quantisation() -> None:
    vectors = clustered_vectors(300, 8, 30, 0.3, 1)
    per_level = semantic_ids(vectors, CFG.model_copy(update={"levels": 3})).report["per_level"]
    residuals = [level["relative_residual"] for level in per_level]
    assert residuals[0] < 1.0 and residuals[1] < residuals[0] and residuals[2] < residuals[1]


def test_without_dedup_codes_have_levels_columns() -> None:
    ids = semantic_ids(clustered_vectors(40, 4, 3, 0.1, 2), CFG.model_copy(update={"dedup": False}))
    assert ids.codes.shape == (40, 2) and "max_dedup_index" not in ids.report


def test_fewer_distinct_points_than_codes() -> None:
    vectors = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # 6 items, 3 distinct points, 256 codes
    ids = semantic_ids(vectors, SemanticIdConfig(levels=3, codes=256, progress=False))
    assert ids.report["per_level"][0]["codes_used"] == 3
    assert ids.report["collision_rate"] == 1.0
    np.testing.assert_array_equal(ids.codes[:, -1], [0, 1, 0, 1, 0, 1])


def test_code_stats_on_a_hand_made_case() -> None:
    half = code_stats(np.array([0, 0, 1, 1]), codebook_size=4)
    assert half == {"codes_used": 2, "usage": 0.5, "entropy_bits": pytest.approx(1.0), "normalized_entropy": pytest.approx(0.5)}
    full = code_stats(np.array([0, 1, 2, 3]), codebook_size=4)
    assert full["entropy_bits"] == pytest.approx(2.0) and full["normalized_entropy"] == pytest.approx(1.0)
    skewed = code_stats(np.array([5, 5, 5, 7]), codebook_size=8)
    expected = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    assert skewed["entropy_bits"] == pytest.approx(expected) and skewed["normalized_entropy"] == pytest.approx(expected / 3)


def test_collision_rate_and_dedup_on_a_hand_made_case() -> None:
    codes = np.array([[0, 1], [2, 3], [0, 1], [0, 1], [2, 4]])
    assert collision_rate(codes) == pytest.approx(3 / 5)
    np.testing.assert_array_equal(dedup_column(codes), [0, 0, 1, 2, 0])


def test_rq_vae_runs_and_reduces_reconstruction_error() -> None:
    vectors = clustered_vectors(200, 16, 10, 0.3, 3)
    cfg = CFG.model_copy(update={"method": "rq_vae", "rqvae_epochs": 30, "rqvae_batch_size": 64, "rqvae_hidden": 32, "rqvae_latent_dim": 8, "rqvae_lr": 3e-3})
    ids = semantic_ids(vectors, cfg)
    report = ids.report
    assert report["reconstruction_mse_final"] < 0.5 * report["reconstruction_mse_initial"]
    assert ids.codes.shape == (200, 3)
    assert ((ids.codes[:, :2] >= 0) & (ids.codes[:, :2] < CFG.codes)).all()
    assert report["collision_rate_after_dedup"] == 0.0
    assert report["per_level"][0]["codes_used"] > 1


def test_empty_input() -> None:
    ids = semantic_ids(np.zeros((0, 4), np.float32), CFG)
    assert ids.codes.shape == (0, 3) and ids.report["collision_rate"] == 0.0
