"""Requests per minute per key: a sliding-window log, exact under concurrency.

Each key keeps the times of its accepted requests in the last window. A request is
accepted while fewer than ``limit`` remain in the window, so no 60-second span ever
holds more than ``limit`` accepted requests. Refused requests are not recorded (a
client that keeps retrying still gets in once the window moves). ``hit`` does not
await, so under Trio the check and the record cannot interleave with another
request's. The clock is injected so tests can move time without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "SlidingWindowLimiter"]


@dataclass(frozen=True)
class Decision:
    """The answer for one request, with what the ``RateLimit-*`` headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the oldest counted request leaves the window
    retry_after_s: int  # when refused: seconds until a request will be accepted

    def headers(self) -> dict[str, str]:
        found = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            found["Retry-After"] = str(self.retry_after_s)
        return found


class SlidingWindowLimiter:
    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, not {window_s!r}")
        self._window = window_s
        self._clock = clock
        self._log: dict[str, deque[float]] = {}

    def hit(self, key: str, limit: int) -> Decision:
        """Count one request of ``key`` against ``limit`` per window (``limit`` ≥ 1)."""
        now = self._clock()
        log = self._log.setdefault(key, deque())
        while log and log[0] <= now - self._window:
            log.popleft()
        allowed = len(log) < limit
        if allowed:
            log.append(now)
        until_free = log[0] + self._window - now if log else 0.0
        return Decision(
            allowed=allowed,
            limit=limit,
            remaining=max(0, limit - len(log)),
            reset_s=math.ceil(until_free),
            retry_after_s=max(1, math.ceil(until_free)),
        )
