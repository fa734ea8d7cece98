"""A minimal async rate limiter: requests start at most `rate` times per second."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """Spaces request starts evenly; None or 0 disables it."""

    def __init__(self, requests_per_second: float | None) -> None:
        self._interval = 1.0 / requests_per_second if requests_per_second else 0.0
        self._next_start = 0.0
        self._lock: asyncio.Lock | None = None

    async def wait(self) -> None:
        """Sleep until this caller may start a request."""
        if not self._interval:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next_start)
            self._next_start = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)
