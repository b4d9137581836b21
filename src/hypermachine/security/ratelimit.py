"""Requests per minute per key: a sliding-window log, exact under concurrency.

A :class:`Limiter` counts; :class:`HostLimiter` is this host's own (a single host),
``cluster.ratelimit`` keeps the log in etcd so a key's limit holds across nodes.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Decision", "HostLimiter", "Limiter", "SlidingWindowLimiter", "decide"]


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
        decision = decide(log, now, limit, self._window)
        if decision.allowed:
            log.append(now)
        return decision


def decide(in_window: Sequence[float], now: float, limit: int, window_s: float) -> Decision:
    """The decision for one more request, given the accepted ones still in the window
    (oldest first); when allowed, the caller records it at ``now``."""
    allowed = len(in_window) < limit
    counted = len(in_window) + (1 if allowed else 0)
    oldest = in_window[0] if in_window else (now if allowed else None)
    until_free = oldest + window_s - now if oldest is not None else 0.0
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, limit - counted),
        reset_s=math.ceil(until_free),
        retry_after_s=max(1, math.ceil(until_free)),
    )


class Limiter(Protocol):
    async def hit(self, key: str, limit: int) -> Decision:
        """Count one request of ``key`` against ``limit`` per minute."""
        ...


class HostLimiter:
    """This host's own count of each key's requests."""

    def __init__(self) -> None:
        self._window = SlidingWindowLimiter()

    async def hit(self, key: str, limit: int) -> Decision:
        return self._window.hit(key, limit)
