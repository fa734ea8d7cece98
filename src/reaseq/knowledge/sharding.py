"""`--shard i/n`: a stable split of the catalogue by a hash of the item id."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import TypeVar

from reaseq.errors import InputError

T = TypeVar("T")
HASH_BYTES = 8  # 64 bits of the digest: uniform enough for any number of shards


def parse_shard(spec: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n (shards are numbered from 0)."""
    parts = spec.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InputError(None, "shard", f"'{spec}' is not of the form i/n", "write e.g. --shard 0/4 for the first of four shards")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or not 0 <= index < count:
        raise InputError(None, "shard", f"shard {index} of {count} does not exist", f"use an index from 0 to {max(count - 1, 0)} and a count of at least 1")
    return index, count


def shard_of(item_id: str, count: int) -> int:
    """The shard an item id belongs to: the same on every machine and in every run."""
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:HASH_BYTES], "big") % count


def select_shard(items: Sequence[T], spec: str | None, key: Callable[[T], str] = lambda item: item.item_id) -> list[T]:  # type: ignore[attr-defined]
    """The items of shard `spec` ('i/n'), in their original order; all items when spec is None."""
    if spec is None:
        return list(items)
    index, count = parse_shard(spec)
    return [item for item in items if shard_of(key(item), count) == index]
