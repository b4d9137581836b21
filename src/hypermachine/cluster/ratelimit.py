"""A key's requests per minute counted across the cluster, not per node.

The sliding-window log of ``security.ratelimit`` kept in etcd: each accepted request
is one key, ``/hypermachine/rate/<key id>/<wall-clock ns>-<node>-<nonce>``, under a lease
that outlives the window (so etcd forgets old requests itself). A request is counted
in one transaction that holds only if the key's guard, ``/hypermachine/rate-guard/<key
id>``, has not changed since the log was read; every accepted request rewrites the
guard, so two nodes cannot both take a key's last request of the minute. Nodes'
clocks are compared: keep them in sync (NTP), as etcd itself wants.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import trio

from ..errors import ClusterUnavailable
from ..security.ratelimit import Decision, decide
from .etcd import Etcd, EtcdError, KeyValue

__all__ = ["RATE_PREFIX", "ClusterLimiter"]

RATE_PREFIX = "/hypermachine/rate/"
_GUARD_PREFIX = "/hypermachine/rate-guard/"


class ClusterLimiter:
    """A :class:`~hypermachine.security.ratelimit.Limiter` on etcd."""

    def __init__(
        self,
        etcd: Etcd,
        node: str,
        *,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._etcd = etcd
        self._node = node
        self._window = window_s
        self._clock = clock
        self._lease = 0
        self._lease_at = -window_s
        self._lease_lock = trio.Lock()

    async def _current_lease(self) -> int:
        """A lease of 1.5 windows, taken anew every half window: each request's record
        lives at least one window, at most two."""
        async with self._lease_lock:
            now = trio.current_time()
            if now - self._lease_at >= self._window / 2:
                self._lease = await self._etcd.grant(int(self._window * 1.5) + 1)
                self._lease_at = now
            return self._lease

    async def hit(self, key: str, limit: int) -> Decision:
        """Count one request of ``key`` against ``limit`` per window, on every node.

        Raises:
            ClusterUnavailable: etcd cannot be asked, or the log kept changing.
        """
        guard, prefix = _GUARD_PREFIX + key, f"{RATE_PREFIX}{key}/"
        decisions: list[Decision] = []

        def plan(log: list[KeyValue]) -> list[tuple[str, str, int]] | None:
            now = self._clock()
            times = sorted(
                t for t in map(_time_of, log) if t is not None and t > now - self._window
            )
            decisions.append(decide(times, now, limit, self._window))
            if not decisions[-1].allowed:
                return None
            record = f"{prefix}{int(now * 1e9)}-{self._node}-{secrets.token_hex(4)}"
            return [(guard, self._node, 0), (record, "", lease)]

        try:
            lease = await self._current_lease()
            written = await self._etcd.guarded_write(guard, prefix, plan)
        except EtcdError as err:
            raise ClusterUnavailable(f"the key's requests cannot be counted: {err}") from err
        if written is False:
            raise ClusterUnavailable("the key's request log kept changing; try again")
        return decisions[-1]


def _time_of(kv: KeyValue) -> float | None:
    """The wall-clock time (s) a request record's key names."""
    name = kv.key.rsplit("/", 1)[-1]
    stamp = name.split("-", 1)[0]
    return int(stamp) / 1e9 if stamp.isdigit() else None
