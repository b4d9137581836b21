"""Who is calling: the :class:`Caller` every VM operation is checked against.

The HTTP layer authenticates a request and sets the caller for the task handling
it; the manager reads it back with :func:`current_caller` at its one ownership
check. Script host calls run with the caller captured when the script started.
Code outside any request (re-adoption, tests driving the manager directly, the
CLI) acts as :data:`SYSTEM`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ANONYMOUS",
    "DEFAULT_TENANT",
    "SYSTEM",
    "TIERS",
    "Caller",
    "Tier",
    "acting_as",
    "current_caller",
    "set_caller",
]

Tier = Literal["free", "pro", "enterprise"]
TIERS: tuple[Tier, ...] = ("free", "pro", "enterprise")
DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    """An authenticated key (or the server itself): what it may see and how much."""

    key_id: str | None
    tenant: str
    tier: Tier
    admin: bool

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see and touch things owned by ``tenant``."""
        return self.admin or tenant == self.tenant


SYSTEM = Caller(key_id=None, tenant=DEFAULT_TENANT, tier="enterprise", admin=True)
"""The server itself, and every request of the open embedded default."""

ANONYMOUS = Caller(key_id=None, tenant="", tier="free", admin=False)
"""A request without a key on a public route: it owns nothing and sees nothing."""

_current: ContextVar[Caller] = ContextVar("hypermachine_caller", default=SYSTEM)


def current_caller() -> Caller:
    return _current.get()


def set_caller(caller: Caller) -> None:
    """Set the caller for the rest of the current task (the HTTP layer, per request)."""
    _current.set(caller)


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Run a block as ``caller`` (script host calls, tests)."""
    token = _current.set(caller)
    try:
        yield
    finally:
        _current.reset(token)
