"""Token, time, cache and failure accounting per agent, summed from the trace steps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from reaseq.knowledge.records import KnowledgeRecord, TraceRecord, TraceStep


@dataclass
class AgentStats:
    """Totals of one agent's calls."""

    calls: int = 0
    cache_hits: int = 0
    requests: int = 0  # model calls made, repair attempts included
    repairs: int = 0  # attempts beyond the first
    revisions: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # time spent waiting for the model

    def add(self, step: TraceStep) -> None:
        """Count one call."""
        self.calls += 1
        self.revisions += int(step.revision)
        if step.cached:
            self.cache_hits += 1
            self.failures += int(step.error is not None)  # a stored failure
            return
        self.requests += step.attempts
        self.repairs += max(0, step.attempts - 1)
        self.failures += int(step.error is not None)
        self.prompt_tokens += step.prompt_tokens
        self.completion_tokens += step.completion_tokens
        self.seconds += step.seconds


@dataclass
class Accounting:
    """Per-agent totals plus item outcomes and wall time of a run."""

    agents: dict[str, AgentStats] = field(default_factory=dict)
    items_ok: int = 0
    items_failed: int = 0
    items_unreviewed: int = 0  # ok generated records the critic gave no usable answer for (no confidence)
    wall_seconds: float = 0.0

    def add_traces(self, traces: Iterable[TraceRecord]) -> None:
        """Count every step of these traces."""
        for trace in traces:
            for step in trace.steps:
                self.agents.setdefault(step.agent, AgentStats()).add(step)

    def add_records(self, records: Iterable[KnowledgeRecord]) -> None:
        """Count item outcomes."""
        for record in records:
            if record.status == "ok":
                self.items_ok += 1
                self.items_unreviewed += int(record.unreviewed)
            else:
                self.items_failed += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with totals and generated tokens per second of wall time."""
        total = AgentStats()
        for stats in self.agents.values():
            for name, value in asdict(stats).items():
                setattr(total, name, getattr(total, name) + value)
        return {
            "items_ok": self.items_ok,
            "items_failed": self.items_failed,
            "items_unreviewed": self.items_unreviewed,
            "wall_seconds": self.wall_seconds,
            "completion_tokens_per_s": total.completion_tokens / self.wall_seconds if self.wall_seconds > 0 else None,
            "agents": {name: asdict(stats) for name, stats in sorted(self.agents.items())},
            "total": asdict(total),
        }


def items_line(summary: Mapping[str, Any]) -> str:
    """'N items ok (U without a usable critic score), F failed', from an accounting summary (Accounting.to_dict)."""
    # .get: accounting files written before items_unreviewed existed have no such key.
    return f"{summary['items_ok']} items ok ({summary.get('items_unreviewed', 0)} without a usable critic score), {summary['items_failed']} failed"
