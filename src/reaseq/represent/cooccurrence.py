"""Collaborative item vectors without a trained model: PPMI of windowed co-occurrence, reduced by truncated SVD."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD

from reaseq.data.dataset import SequenceData
from reaseq.errors import InputError


def as_row_indices(data: SequenceData, rows: np.ndarray) -> np.ndarray:
    """Sorted int64 interaction-row indices from either a boolean mask over all rows or an index array."""
    rows = np.asarray(rows)
    if rows.dtype == bool:
        if rows.shape != data.items.shape:
            raise InputError(None, "train_rows", f"boolean mask of shape {rows.shape}, expected {data.items.shape}", "pass a mask over every interaction row, e.g. TopKSplit.train_mask()")
        return np.flatnonzero(rows)
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
        raise InputError(None, "train_rows", f"expected a 1-d integer index array or a boolean mask, got {rows.dtype} {rows.shape}", "pass np.flatnonzero(mask) or the mask itself")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(data.items)):
        raise InputError(None, "train_rows", f"row indices must lie in [0, {len(data.items)})", "index the rows of this SequenceData")
    return np.unique(rows.astype(np.int64))


def ppmi_matrix(data: SequenceData, rows: np.ndarray, window: int) -> sp.csr_matrix:
    """Symmetric [n_items+1, n_items+1] positive PMI of items at most `window` steps apart in a user's given rows."""
    rows = as_row_indices(data, rows)
    items, users = data.items[rows], data.users[rows]  # rows sorted => each user's given events stay in time order
    size = data.n_items + 1
    left, right = [], []
    for step in range(1, window + 1):
        same_user = users[:-step] == users[step:]
        left.append(items[:-step][same_user])
        right.append(items[step:][same_user])
    a, b = np.concatenate(left), np.concatenate(right)
    pairs = np.concatenate([a, b]), np.concatenate([b, a])
    counts = sp.coo_matrix((np.ones(len(pairs[0]), np.float64), pairs), shape=(size, size)).tocsr()
    counts.sum_duplicates()
    total = counts.sum()
    if total == 0:
        return sp.csr_matrix((size, size))
    marginal = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (marginal[coo.row] * marginal[coo.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(size, size))


def cooccurrence_embeddings(data: SequenceData, rows: np.ndarray, dim: int, window: int, seed: int) -> np.ndarray:
    """float32 [n_items+1, dim] item vectors from the given (training) rows only; row 0 and items without co-occurrence are zeros."""
    ppmi = ppmi_matrix(data, rows, window)
    seen = np.flatnonzero(np.diff(ppmi.indptr) > 0)
    out = np.zeros((data.n_items + 1, dim), np.float32)
    # TruncatedSVD needs fewer components than columns; a tiny catalogue gets fewer, zero-padded.
    k = min(dim, len(seen) - 1)
    if k < 1:
        return out
    sub = ppmi[seen][:, seen]
    svd = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed)
    u_s = svd.fit_transform(sub)  # U * S
    # U * sqrt(S): the symmetric split of the factorisation, as in word2vec-style PMI embeddings.
    out[seen, :k] = (u_s / np.sqrt(np.maximum(svd.singular_values_, np.finfo(np.float64).tiny))).astype(np.float32)
    return out
