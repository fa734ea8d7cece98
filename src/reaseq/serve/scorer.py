"""Score one user's candidate items in one batched forward pass."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from reaseq.data.batches import Batch
from reaseq.errors import InputError
from reaseq.serve.one_user import one_user_forward
from reaseq.serve.tables import ServingTables, raw_key

RawId = int | str
SHOWN_IDS = 20  # unknown ids quoted in an error message (the error object keeps them all)


class UnknownIdsError(InputError):
    """Ids in a request that the serving tables do not know; `ids` lists them all."""

    def __init__(self, field: str, ids: list[RawId], fix: str) -> None:
        self.ids = ids
        shown = ", ".join(repr(i) for i in ids[:SHOWN_IDS]) + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")
        super().__init__(None, field, f"{len(ids)} unknown id(s): {shown}", fix)


def with_user_features(model: nn.Module, user_features: torch.Tensor) -> nn.Module:
    """A shallow twin of the ranker sharing every weight but reading user attributes from `user_features`.

    The rankers index a [n_users, F] buffer by dense user id; the serving tables add a cold-user row and may
    renumber users on refresh, so each table version gets its own buffer without copying any parameter.
    """
    if "user_features" not in model._buffers:
        return model
    twin = copy.copy(model)
    twin._buffers = dict(model._buffers)
    twin.user_features = user_features
    return twin


class Scorer:
    """A ranker bound to one version of the serving tables (immutable once built).

    `score` runs `scoring_model`: with `one_user` (the default) the ranker's one-user factorisation, which
    encodes the user's history once per request instead of once per candidate (see serve/one_user.py), when it
    applies to the ranker and matches its scores on probe batches; otherwise, and in `predict`, the ranker itself.
    """

    def __init__(self, model: nn.Module, tables: ServingTables, name: str, one_user: bool = True) -> None:
        self.tables = tables
        self.name = name
        self.model = with_user_features(model.eval(), torch.tensor(tables.user_features))  # a copy: the tables stay read-only
        fast = one_user_forward(self.model, self._probes()) if one_user else None
        self.scoring_model: nn.Module = fast if fast is not None else self.model

    def _probes(self) -> list[Batch]:
        """Serving batches of the stored user with the longest history and of the cold user, over the first items."""
        tables = self.tables
        items = np.arange(1, min(len(tables.item_index), 16) + 1, dtype=np.int64)
        longest = int(np.argmax((tables.hist_items > 0).sum(1)))
        return [self._dense_batch(user, items, tables.hist_items[user].astype(np.int64), tables.hist_actions[user].astype(np.int64)) for user in dict.fromkeys([longest, tables.cold_user])]

    def _dense_batch(self, user: int, candidates: np.ndarray, items: np.ndarray, actions: np.ndarray) -> Batch:
        n = len(candidates)
        batch = {
            "user": torch.full((n,), user, dtype=torch.long),  # [C]
            "item": torch.from_numpy(candidates),  # [C]
            "hist_items": torch.from_numpy(items).unsqueeze(0).expand(n, -1),  # [C, L] views of one row
            "hist_actions": torch.from_numpy(actions).unsqueeze(0).expand(n, -1),  # [C, L]
        }
        for key, table in self.tables.user_inputs.items():  # optional per-user inputs, e.g. inferred behaviours
            batch[key] = torch.from_numpy(table[user].copy()).unsqueeze(0).expand(n, *table.shape[1:])  # [C, ...]
        return batch

    def encode_items(self, ids: Sequence[RawId], field: str) -> np.ndarray:
        """Dense ids of raw item ids; every unknown one is reported at once."""
        index = self.tables.item_index
        dense = np.fromiter((index.get(raw_key(i), 0) for i in ids), dtype=np.int64, count=len(ids))
        if (dense == 0).any():
            unknown = list(dict.fromkeys(i for i, d in zip(ids, dense) if d == 0))
            raise UnknownIdsError(field, unknown, "send only item ids of the run's catalogue (data/items.parquet)")
        return dense

    def encode_actions(self, labels: Sequence[str], field: str) -> np.ndarray:
        """Action codes of action labels (rating levels such as "4", or behaviour types such as "buy")."""
        index = self.tables.action_index
        codes = np.fromiter((index.get(label, 0) for label in labels), dtype=np.int64, count=len(labels))
        if (codes == 0).any():
            unknown = list(dict.fromkeys(a for a, c in zip(labels, codes) if c == 0))
            raise UnknownIdsError(field, unknown, f"use one of the run's actions {list(index)}")
        return codes

    def history(self, user_id: RawId, fresh_history: Sequence[RawId] | None = None, fresh_actions: Sequence[str] | None = None) -> tuple[int, np.ndarray, np.ndarray]:
        """(dense user, items [L], actions [L]): stored history, then fresh events (most recent last), left-padded.

        An unknown user is scored as a cold user: no stored history and no attributes, so only the
        fresh history (if any) personalises the scores; this is what a brand-new visitor looks like.
        Fresh events without actions get the padding action (no rating/behaviour signal).
        """
        tables, max_len = self.tables, self.tables.max_len
        user = tables.user_row(user_id)
        items, actions = tables.hist_items[user], tables.hist_actions[user]
        fresh_history = fresh_history or []
        if fresh_actions is not None and len(fresh_actions) != len(fresh_history):
            raise InputError(None, "history_actions", f"{len(fresh_actions)} actions for {len(fresh_history)} history items", "send one action per history item, or none")
        if not fresh_history:
            return user, items.astype(np.int64), actions.astype(np.int64)
        fresh_items = self.encode_items(fresh_history, "history")
        fresh_codes = self.encode_actions(fresh_actions, "history_actions") if fresh_actions is not None else np.zeros(len(fresh_items), np.int64)
        stored = items > 0  # left-padded, so the real events are the right-hand end
        merged_items = np.concatenate([items[stored], fresh_items])[-max_len:]
        merged_actions = np.concatenate([actions[stored], fresh_codes])[-max_len:]
        out_items, out_actions = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
        out_items[max_len - len(merged_items) :] = merged_items
        out_actions[max_len - len(merged_actions) :] = merged_actions
        return user, out_items, out_actions

    def batch(self, user_id: RawId, candidate_ids: Sequence[RawId], fresh_history: Sequence[RawId] | None = None, fresh_actions: Sequence[str] | None = None) -> Batch:
        """One batch holding every candidate; the user's history is broadcast, not copied, across rows."""
        candidates = self.encode_items(candidate_ids, "candidates")
        user, items, actions = self.history(user_id, fresh_history, fresh_actions)
        return self._dense_batch(user, candidates, items, actions)

    def predict(self, batch: Batch) -> torch.Tensor:
        """Click probabilities of any batch (rows may hold different users), one forward pass of the ranker."""
        with torch.inference_mode():
            return torch.sigmoid(self.model(batch))

    def score(self, user_id: RawId, candidate_ids: Sequence[RawId], fresh_history: Sequence[RawId] | None = None, fresh_actions: Sequence[str] | None = None) -> list[float]:
        """Click probability of each candidate for the user, in candidate order (one forward pass)."""
        batch = self.batch(user_id, candidate_ids, fresh_history, fresh_actions)
        with torch.inference_mode():
            return torch.sigmoid(self.scoring_model(batch)).tolist()
