"""Sentence encoding with the embedded all-MiniLM-L6-v2 and the per-model vector cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reaseq.errors import InputError
from reaseq.represent import encode
from reaseq.represent.config import EncoderConfig
from reaseq.represent.encode import cache_file, encode_texts, model_identity

TEXTS = [
    "A space adventure with aliens and starships",
    "Science fiction film about extraterrestrials invading Earth",
    "A cookbook of Italian pasta recipes",
    "Romantic comedy set in Paris",
    "Horror movie in a haunted house",
    "Documentary about ocean wildlife",
    "Animated family film with talking animals",
    "Crime thriller about a bank heist",
    "War drama set in the trenches of 1916",
    "Musical about a Broadway dancer",
]
CFG = EncoderConfig(progress=False, batch_size=4)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many texts each model.encode call received (the real model does the work)."""
    calls: list[int] = []
    real = encode.load_encoder

    class Counting:
        def __init__(self, model: object) -> None:
            self.model = model

        def get_embedding_dimension(self) -> int:
            return self.model.get_embedding_dimension()

        def encode(self, texts: list[str], **kwargs: object) -> np.ndarray:
            calls.append(len(texts))
            return self.model.encode(texts, **kwargs)

    monkeypatch.setattr(encode, "load_encoder", lambda cfg: Counting(real(cfg)))
    return calls


def test_vectors_are_unit_length_and_semantic(tmp_path: Path) -> None:
    vectors = encode_texts(TEXTS, CFG, None)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # two alien films are closer than an alien film and a cookbook


def test_cache_hit_encodes_only_new_texts(tmp_path: Path, counted: list[int]) -> None:
    first = encode_texts(TEXTS[:8], CFG, tmp_path)
    assert sum(counted) == 8
    assert cache_file(tmp_path, CFG).is_file()
    counted.clear()
    second = encode_texts(TEXTS, CFG, tmp_path)  # 8 cached + 2 new
    assert sum(counted) == 2
    np.testing.assert_allclose(second[:8], first, atol=1e-6)
    counted.clear()
    third = encode_texts(list(reversed(TEXTS)) + [TEXTS[0]], CFG, tmp_path)  # all cached, order and repeats honoured
    assert counted == []
    np.testing.assert_array_equal(third[:-1], second[::-1])
    np.testing.assert_array_equal(third[-1], second[0])


def test_duplicate_texts_encode_once(counted: list[int]) -> None:
    vectors = encode_texts([TEXTS[0], TEXTS[0], TEXTS[1]], CFG, None)
    assert sum(counted) == 2
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_identity_tracks_what_changes_vectors(tmp_path: Path) -> None:
    other = CFG.model_copy(update={"normalize": False})
    assert model_identity(CFG) != model_identity(other)
    assert cache_file(tmp_path, CFG) != cache_file(tmp_path, other)
    assert model_identity(CFG) == model_identity(CFG.model_copy(update={"batch_size": 7}))  # batching does not


def test_corrupt_cache_names_the_file_and_the_fix(tmp_path: Path) -> None:
    encode_texts(TEXTS[:2], CFG, tmp_path)
    path = cache_file(tmp_path, CFG)
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError) as err:
        encode_texts(TEXTS[:2], CFG, tmp_path)
    assert str(path) in str(err.value) and "delete it" in str(err.value)
    path.unlink()  # the fix works: the cache is rebuilt
    assert encode_texts(TEXTS[:2], CFG, tmp_path).shape == (2, 384)


def test_empty_input_gives_empty_matrix() -> None:
    assert encode_texts([], CFG, None).shape == (0, 384)
