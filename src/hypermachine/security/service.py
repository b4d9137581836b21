"""The security layer's state: auth mode, key lookup, rate limits, quotas, audit.

Built once by ``open_services`` and handed to the HTTP layer and the manager.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

from ..config import ConfigError, Settings
from ..errors import ClusterUnavailable, Unauthorized
from .caller import ANONYMOUS, SYSTEM, Caller, Tier, current_caller
from .db import LocalKeys, SecurityStore
from .keybook import KeyBook
from .ratelimit import Decision, HostLimiter, Limiter
from .web import is_loopback

__all__ = ["AuthMode", "Security", "is_loopback", "presented_key"]

log = logging.getLogger(__name__)

AuthMode = Literal["open", "keys"]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer …`` or ``X-API-Key`` (the former wins)."""
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (headers.get("X-API-Key") or "").strip() or None


class Security:
    """``store`` holds the audit log (and this host's keys); ``keys`` is where keys are
    kept and ``limiter`` where requests are counted: this host's (the defaults) or the
    cluster's."""

    def __init__(
        self,
        settings: Settings,
        store: SecurityStore,
        keys: KeyBook | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.keys: KeyBook = keys if keys is not None else LocalKeys(store)
        self.limiter: Limiter = limiter if limiter is not None else HostLimiter()
        self._keyed = settings.auth == "keys"

    async def check_startup(self) -> None:
        """Refuse an open server on a non-loopback bind unless explicitly opted out.

        Raises:
            ConfigError: ``auth = "auto"``, no API key exists and the bind is not loopback.
        """
        has_keys = await self.keys.any_keys()  # one read serves the check and the mode
        open_by_default = self.settings.auth == "auto" and not has_keys
        if self.settings.auth == "auto":
            self._keyed = self._keyed or has_keys or not is_loopback(self.settings.host)
        if open_by_default and not is_loopback(self.settings.host):
            raise ConfigError(
                f"refusing to serve {self.settings.host} without authentication: create "
                "a key (hypermachine key create --name NAME --tier free) or set "
                "auth = 'open' (HM_AUTH=open, --auth open) to opt out explicitly"
            )
        mode = self.mode()
        if mode == "open":
            log.warning(
                "auth: OPEN — no API key required (%s); create a key to require one",
                "auth = 'open'" if self.settings.auth == "open" else "no keys, loopback bind",
            )
        else:
            log.info("auth: an API key is required (all but the public documents)")

    def mode(self) -> AuthMode:
        """``open`` for the embedded default (or the explicit opt-out), else ``keys``
        (as of the last :meth:`refresh`).

        Once a key exists the server stays keyed, even if every key is revoked.
        """
        if self.settings.auth == "open":
            return "open"
        return "keys" if self._keyed else "open"

    async def refresh(self) -> None:
        """Learn whether a key now exists (made by the CLI, or on another node).

        While the cluster's keys cannot be read the mode stays what it was: an open
        node binds loopback only, and a keyed one checks each key (503 until etcd
        answers)."""
        if self.settings.auth != "auto" or self._keyed:
            return
        try:
            self._keyed = not is_loopback(self.settings.host) or await self.keys.any_keys()
        except ClusterUnavailable as err:
            log.debug("auth mode unchanged: %s", err.message)

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        """The caller presenting ``headers``: :data:`ANONYMOUS` without a key (what it
        may call is the operation's access rule, checked by the dispatcher).

        Raises:
            Unauthorized: an unknown or a revoked key was sent.
        """
        if self.mode() == "open":
            return SYSTEM
        secret = presented_key(headers)
        if secret is None:
            return ANONYMOUS
        caller = await self.keys.caller_for(secret)
        if caller is None:
            raise Unauthorized("invalid API key")
        return caller

    async def rate_limit(self, caller: Caller) -> Decision | None:
        """Count one request of ``caller``; None when it has no limit (no key, unlimited)."""
        limit = self.tier_value("rate_limit", caller.tier)
        if caller.key_id is None or limit <= 0:
            return None
        return await self.limiter.hit(caller.key_id, limit)

    def tier_value(
        self, kind: Literal["rate_limit", "vm_quota", "storage_quota_mb"], tier: Tier
    ) -> int:
        value: int = getattr(self.settings, f"{kind}_{tier}")
        return value

    def vm_quota(self) -> int:
        """Live VMs the current caller's tenant may have (0: no limit)."""
        caller = current_caller()
        return 0 if caller is SYSTEM else self.tier_value("vm_quota", caller.tier)

    def storage_quota_bytes(self) -> int:
        """Disk the current caller's tenant may hold (0: no limit)."""
        caller = current_caller()
        if caller is SYSTEM:
            return 0
        return self.tier_value("storage_quota_mb", caller.tier) * 1024 * 1024

    def audit(
        self,
        operation: str,
        target: str | None,
        outcome: str,
        details: Mapping[str, object] | None = None,
    ) -> None:
        """Record one call by the current caller (never a secret)."""
        self.store.record(
            current_caller(), operation, target, outcome, details, node=self.settings.node_name
        )
