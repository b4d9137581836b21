"""THE one place the agent faces read the server's authentication mode.

It asks the security layer: ``"none"`` for the open embedded default, else
``"api_key"``. The plugin manifest, the OpenAPI security scheme and
``hypermachine mcp`` (which sends ``--api-key`` as a bearer token) follow from it.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["AuthMode", "auth_headers", "auth_mode", "plugin_auth"]

AuthMode = Literal["none", "api_key"]


def auth_mode(services: Any) -> AuthMode:
    """The server's auth mode, from the security layer (``hypermachine.security``)."""
    security = getattr(services, "security", None)
    if security is None or security.mode() == "open":
        return "none"
    return "api_key"


def plugin_auth(mode: AuthMode) -> dict[str, Any]:
    """The ``auth`` object of the AI plugin manifest for ``mode``."""
    if mode == "api_key":
        return {"type": "user_http", "authorization_type": "bearer"}
    return {"type": "none"}


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers a client sends to authenticate with ``api_key`` (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
