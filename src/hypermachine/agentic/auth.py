"""THE one place the agent faces read the server's authentication mode.

API keys are not built yet, so the mode is ``"none"``. When they land, change
:func:`auth_mode` to read the setting; the plugin manifest, the OpenAPI security
scheme and ``hypermachine mcp`` (which already sends ``--api-key`` as a bearer
token) follow from it.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["AuthMode", "auth_headers", "auth_mode", "plugin_auth"]

AuthMode = Literal["none", "api_key"]


def auth_mode(services: Any) -> AuthMode:
    """The server's auth mode.  >>> SWITCH HERE when API keys exist. <<<"""
    del services  # will read services.settings once API keys exist
    return "none"


def plugin_auth(mode: AuthMode) -> dict[str, Any]:
    """The ``auth`` object of the AI plugin manifest for ``mode``."""
    if mode == "api_key":
        return {"type": "user_http", "authorization_type": "bearer"}
    return {"type": "none"}


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers a client sends to authenticate with ``api_key`` (none without one)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
