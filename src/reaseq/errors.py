"""User-facing errors that say what is wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class ReaSeqError(Exception):
    """Base class of every error the package raises on purpose."""


class InputError(ReaSeqError):
    """Bad input: names the file, the field (column, key or row) and the fix."""

    def __init__(self, file: str | Path | None, field: str | None, problem: str, fix: str) -> None:
        self.file = str(file) if file is not None else None
        self.field = field
        self.problem = problem
        self.fix = fix
        where = []
        if self.file:
            where.append(f"file '{self.file}'")
        if field:
            where.append(f"field '{field}'")
        prefix = ", ".join(where) + ": " if where else ""
        super().__init__(f"{prefix}{problem}. Fix: {fix}")


class ConfigError(InputError):
    """A configuration file or override that cannot be used."""
