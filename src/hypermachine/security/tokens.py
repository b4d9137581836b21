"""Console tokens: how a browser page opens a console websocket without its key.

A browser cannot put an ``Authorization`` header on a websocket, and a key in a
URL would end up in logs and history. A page holding a key therefore asks for a
token (the ``create_console_token`` operation) and opens the websocket with
``?token=``. A token is short-lived, single-use, and bound to the caller that
asked (its tenant), one VM and one console kind (``serial`` or ``vnc``): it opens
that console once, within ``console_token_ttl_s``, and nothing else.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..errors import Unauthorized
from .caller import Caller

__all__ = ["ConsoleKind", "ConsoleTokens"]

ConsoleKind = Literal["serial", "vnc"]
_MAX_OUTSTANDING = 10_000


@dataclass(frozen=True)
class _Grant:
    caller: Caller
    vm_id: str
    kind: ConsoleKind
    expires: float


class ConsoleTokens:
    """The tokens issued and not yet used or expired (in memory: a restart voids them)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl_s > 0:
            raise ValueError(f"console token lifetime must be positive, not {ttl_s!r}")
        self._ttl_s = ttl_s
        self._clock = clock
        self._grants: dict[str, _Grant] = {}

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def issue(self, caller: Caller, vm_id: str, kind: ConsoleKind) -> str:
        """A new token for ``caller`` to open ``vm_id``'s ``kind`` console once."""
        now = self._clock()
        for token in [t for t, g in self._grants.items() if g.expires <= now]:
            del self._grants[token]
        while len(self._grants) >= _MAX_OUTSTANDING:  # the oldest go first
            del self._grants[next(iter(self._grants))]
        token = "hmct_" + secrets.token_urlsafe(24)
        self._grants[token] = _Grant(caller, vm_id, kind, now + self._ttl_s)
        return token

    def caller_of(self, token: str) -> Caller:
        """Who the (unexpired) token was issued to; it stays unused.

        Raises:
            Unauthorized: an unknown, used or expired token.
        """
        grant = self._grants.get(token)
        if grant is None or grant.expires <= self._clock():
            raise Unauthorized("invalid or expired console token")
        return grant.caller

    def redeem(self, token: str, caller: Caller, vm_id: str, kind: ConsoleKind) -> None:
        """Use the token up: it must be ``caller``'s tenant's, for this VM and kind.

        Raises:
            Unauthorized: unknown, used, expired, or issued for something else (the
                token is spent either way).
        """
        grant = self._grants.pop(token, None)
        if (
            grant is None
            or grant.expires <= self._clock()
            or grant.caller.tenant != caller.tenant
            or grant.vm_id != vm_id
            or grant.kind != kind
        ):
            raise Unauthorized("invalid or expired console token")
