"""--shard i/n: disjoint, covering, stable."""

from __future__ import annotations

import itertools

import pytest

from reaseq.errors import InputError
from reaseq.knowledge.sharding import parse_shard, select_shard, shard_of


def test_shards_are_disjoint_cover_and_balanced() -> None:
    ids = [f"item-{i}" for i in range(3000)]
    shards = [select_shard(ids, f"{i}/3", key=str) for i in range(3)]
    assert sorted(itertools.chain.from_iterable(shards)) == sorted(ids)
    assert all(800 < len(s) < 1200 for s in shards)
    assert select_shard(ids, None, key=str) == ids
    assert shard_of("item-7", 3) == shard_of("item-7", 3)  # no per-process hash seed


@pytest.mark.parametrize("spec", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shard_specs(spec: str) -> None:
    with pytest.raises(InputError, match="shard"):
        parse_shard(spec)
