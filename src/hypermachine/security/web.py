"""The web boundary: which ``Host`` an open server serves and which ``Origin`` may
open a console or speak MCP.

A page on another site can make a browser send requests to a server on loopback
(DNS rebinding gives it a name that resolves to 127.0.0.1). In open mode — no key
needed — only requests naming a loopback host (or a configured one) are served;
in every mode, a browser page may open a console websocket or call ``/mcp`` only
from a loopback origin or one the operator configured (``allowed_origins``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

__all__ = ["host_allowed", "is_loopback", "origin_allowed"]


def is_loopback(host: str) -> bool:
    """``localhost`` (and its subdomains), or a loopback IPv4/IPv6 address."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    """The host of ``host[:port]`` (IPv6 in brackets kept whole)."""
    if netloc.startswith("["):
        return netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def host_allowed(host_header: str | None, allowed_origins: Collection[str]) -> bool:
    """Whether a request naming ``host_header`` may be served without a key."""
    if not host_header:
        return False
    host = _hostname(host_header.strip().lower())
    return is_loopback(host) or any(
        urlsplit(o).hostname == host.strip("[]") for o in allowed_origins
    )


def origin_allowed(origin: str | None, allowed_origins: Collection[str]) -> bool:
    """No ``Origin`` (not a browser), a loopback origin, or a configured one."""
    if origin is None:
        return True
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return is_loopback(parts.hostname) or origin.strip().rstrip("/").lower() in allowed_origins
