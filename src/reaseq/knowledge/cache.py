"""Content-addressed cache of validated agent answers: one JSON file per key, written atomically."""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reaseq.errors import InputError
from reaseq.io import json_safe, sha256_text, write_bytes, write_text

log = logging.getLogger("reaseq")

CACHE_FORMAT = 1  # bump when the entry layout changes; it is part of every key
SHARD_CHARS = 2  # ab/cdef...json: 256 folders keep directory listings short on big catalogues
_KEY = re.compile(r"^[0-9a-f]{64}$")


def _canonical(obj: Any) -> str:
    return json.dumps(json_safe(obj), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_hash(messages: list[dict[str, str]], json_schema: Mapping[str, Any] | None) -> str:
    """Hash of everything else a call sends (rendered prompts with schema, perspective, drafts; output schema)."""
    return sha256_text(_canonical({"messages": messages, "json_schema": json_schema}))


def cache_key(
    *, item_text_hash: str, agent: str, prompt_version: str, model_id: str, decoding: Mapping[str, Any], request: str
) -> str:
    """Key of one agent call: item text hash, agent, prompt version, model id, decoding parameters and request hash."""
    return sha256_text(
        _canonical(
            {
                "format": CACHE_FORMAT,
                "item_text_hash": item_text_hash,
                "agent": agent,
                "prompt_version": prompt_version,
                "model_id": model_id,
                "decoding": dict(decoding),
                "request": request,
            }
        )
    )


@dataclass
class CacheStats:
    """What a cache folder holds, and how this process used it."""

    entries: int
    bytes: int
    by_agent: dict[str, int]
    hits: int
    misses: int
    writes: int


@dataclass
class MergeReport:
    """Outcome of merging cache folders."""

    copied: int = 0
    identical: int = 0
    conflicts: list[str] = field(default_factory=list)  # keys whose outputs differ (kept from the destination)


def _has_answer(entry: Mapping[str, Any]) -> bool:
    return "output" in entry or isinstance(entry.get("failure"), str)


def _answer(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"output": entry.get("output"), "failure": entry.get("failure")}


class KnowledgeCache:
    """Sharded folder of entries: <root>/<key[:2]>/<key[2:]>.json."""

    def __init__(self, root: str | Path, reuse: bool = True, replay_only: bool = False, keep_failures: bool = True) -> None:
        if replay_only and not reuse:
            raise ValueError("a replay-only cache must reuse its entries")
        self.root = Path(root)
        self.reuse = reuse  # False: every call is recomputed and overwrites its entry (`--regenerate`)
        self.replay_only = replay_only  # True: a call that is not cached fails instead of asking the model
        # True: a call whose every attempt got an unusable answer is stored as a `failure` entry, so a resumed run
        # or a replay reports that failure instead of spending the attempts again (transport errors are never stored).
        self.keep_failures = keep_failures
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def path_for(self, key: str) -> Path:
        """File of one key."""
        if not _KEY.match(key):
            raise ValueError(f"not a cache key (64 lowercase hex digits): {key!r}")
        return self.root / key[:SHARD_CHARS] / f"{key[SHARD_CHARS:]}.json"

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            # Writes are atomic, so this is a hand-edited or foreign file: recompute rather than fail the run.
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
            return None
        return entry if isinstance(entry, dict) else None

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry stored under key (an `output`, or a `failure` message), or None."""
        entry = self._read(self.path_for(key)) if self.reuse else None
        if entry is None or entry.get("key") != key or not _has_answer(entry):
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store an entry (must hold `output` or `failure`); concurrent writers of one key leave one complete file."""
        if not _has_answer(entry):
            raise ValueError("a cache entry needs an 'output' or a 'failure'")
        # Key order is kept (not sorted): field order is meaningful, and a cached answer must replay exactly.
        write_text(self.path_for(key), json.dumps(json_safe({**entry, "key": key}), ensure_ascii=False, allow_nan=False) + "\n")
        self.writes += 1

    def all_keys(self) -> Iterator[str]:
        """Every key in the folder."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.is_dir() and len(shard.name) == SHARD_CHARS:
                for file in sorted(shard.glob("*.json")):
                    key = shard.name + file.stem
                    if _KEY.match(key):
                        yield key

    def stats(self) -> CacheStats:
        """Entry count, size, entries per agent, and this process's hits, misses and writes."""
        agents: Counter[str] = Counter()
        total_bytes = 0
        count = 0
        for key in self.all_keys():
            path = self.path_for(key)
            total_bytes += path.stat().st_size
            count += 1
            entry = self._read(path) or {}
            agents[str(entry.get("agent", "?"))] += 1
        return CacheStats(count, total_bytes, dict(sorted(agents.items())), self.hits, self.misses, self.writes)


def merge_caches(sources: Iterable[str | Path], dest: str | Path, *, on_conflict: Literal["error", "keep"] = "error") -> MergeReport:
    """Copy keys missing from dest out of each source; keys present on both sides must hold the same output."""
    target = KnowledgeCache(dest)
    report = MergeReport()
    plan: list[tuple[str, dict[str, Any]]] = []
    planned: dict[str, dict[str, Any]] = {}
    # Check every key before writing any, so a conflict leaves the destination untouched.
    for source in sources:
        cache = KnowledgeCache(source)
        if not cache.root.is_dir():
            raise InputError(source, None, "cache folder not found", "pass folders written by the knowledge step (its cache.dir)")
        for key in cache.all_keys():
            entry = cache._read(cache.path_for(key))
            if entry is None:
                continue
            existing = planned.get(key) or target._read(target.path_for(key))
            if existing is None:
                plan.append((key, entry))
                planned[key] = entry
            elif _canonical(_answer(existing)) == _canonical(_answer(entry)):
                report.identical += 1
            elif on_conflict == "error":
                raise InputError(
                    cache.path_for(key),
                    key,
                    "this cache entry has a different output than the same key in another folder (a non-deterministic backend?)",
                    "merge with on_conflict='keep' to keep the first, or run the planner once and share its cache before sharding",
                )
            else:
                report.conflicts.append(key)
    for key, entry in plan:
        target.put(key, entry)
        report.copied += 1
    return report


def export_pack(cache: KnowledgeCache, path: str | Path, keys: Iterable[str] | None = None) -> int:
    """Write cache entries (all, or `keys`) to one gzipped JSON Lines file, sorted by key; returns the count."""
    chosen = sorted(set(keys) if keys is not None else set(cache.all_keys()))
    lines = []
    for key in chosen:
        entry = cache._read(cache.path_for(key))
        if entry is None:
            raise InputError(cache.path_for(key), key, "the entry to pack is missing or unreadable", "rerun the knowledge step so the cache is complete")
        lines.append(_canonical(entry))
    # mtime=0: the same entries give the same bytes, so a shipped pack only changes when its content does.
    payload = gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), mtime=0)
    write_bytes(Path(path), payload)
    return len(lines)


def read_pack(path: str | Path) -> list[dict[str, Any]]:
    """The validated entries of a pack (each with its 'key')."""
    path = Path(path)
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "knowledge cache pack not found", "fix knowledge.cache.seed_packs or run `reaseq knowledge --regenerate`") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"not a gzipped JSON Lines cache pack ({exc})", "re-create it with `reaseq knowledge-pack`") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise InputError(path, f"line {number}", f"invalid JSON ({exc})", "re-create the pack with `reaseq knowledge-pack`") from None
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not _KEY.match(key) or not _has_answer(entry):
            raise InputError(path, f"line {number}", "an entry without a valid 'key' and an 'output' or 'failure'", "re-create the pack with `reaseq knowledge-pack`")
        entries.append(entry)
    return entries


def import_pack(path: str | Path, cache: KnowledgeCache) -> int:
    """Add the entries of a pack to a cache folder (keys already there are kept); returns how many were added."""
    added = 0
    for entry in read_pack(path):
        key = entry["key"]
        if cache._read(cache.path_for(key)) is None:
            cache.put(key, {k: v for k, v in entry.items() if k != "key"})
            added += 1
    return added
