"""The Model Context Protocol, transport-neutral: JSON-RPC in, JSON-RPC out.

Both protocol eras the official SDK speaks are served:

- *Handshake era* (2024-11-05 … 2025-11-25): ``initialize`` negotiates a version
  (the HTTP transport then issues an ``Mcp-Session-Id``), later requests carry
  no envelope.
- *Stateless era* (2026-07-28): every request carries its protocol version,
  client info and capabilities in ``params._meta`` (and, over HTTP, the
  ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name`` headers, which must agree
  with the body); ``server/discover`` replaces ``initialize``; results carry
  ``resultType``.

A request is stateless-era when its ``_meta`` names a protocol version, or its
version header is not a handshake-era one. Tools come from a :class:`ToolBackend`:
the local registry for ``/mcp``, a remote server for ``hypermachine mcp``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .. import __version__
from ..errors import UnknownTool

__all__ = [
    "HANDSHAKE_VERSIONS",
    "MODERN_VERSIONS",
    "SUPPORTED_VERSIONS",
    "Incoming",
    "McpCore",
    "RpcError",
    "ToolBackend",
    "error_message",
    "parse_message",
]

HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS = ("2026-07-28",)
SUPPORTED_VERSIONS = (*HANDSHAKE_VERSIONS, *MODERN_VERSIONS)

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
HEADER_MISMATCH, UNSUPPORTED_VERSION = -32020, -32022

_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
_CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
_SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"

_SERVER_INFO = {"name": "hypermachine", "title": "HyperMachine", "version": __version__}
_INSTRUCTIONS = (
    "HyperMachine runs QEMU virtual machines on this host. Use list_images to pick an "
    "image, create_vm (start=true, wait=true) to boot one, get_vm / wait_for_vm to follow "
    "its state, stop_vm and delete_vm to clean up. Tool errors carry a code and details."
)


class RpcError(Exception):
    """A JSON-RPC error answer (code, message, optional data)."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class ToolBackend(Protocol):
    """Where tools come from and run."""

    async def list_tools(self) -> list[dict[str, Any]]: ...

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        """``(ok, result or error)``. Raises: UnknownTool."""
        ...


@dataclass(frozen=True)
class Incoming:
    """One JSON-RPC message from the client."""

    method: str | None
    params: dict[str, Any]
    id: str | int | None
    is_request: bool

    @property
    def envelope_version(self) -> object:
        meta = self.params.get("_meta")
        return meta.get(_VERSION_KEY) if isinstance(meta, dict) else None


def parse_message(raw: object) -> Incoming:
    """Check the JSON-RPC 2.0 envelope.

    Raises:
        RpcError: INVALID_REQUEST (a batch, a non-object, a wrong envelope).
    """
    if isinstance(raw, list):
        raise RpcError(INVALID_REQUEST, "batches are not supported; send one message per POST")
    if not isinstance(raw, dict) or raw.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, "not a JSON-RPC 2.0 message")
    msg_id = raw.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        raise RpcError(INVALID_REQUEST, "id must be a string or an integer")
    method = raw.get("method")
    if method is None:  # a response or error from the client: nothing asked for one
        return Incoming(None, {}, msg_id, is_request=False)
    params = raw.get("params", {})
    if not isinstance(method, str) or not isinstance(params, dict):
        raise RpcError(INVALID_REQUEST, "method must be a string and params an object")
    return Incoming(method, params, msg_id, is_request="id" in raw and msg_id is not None)


def error_message(msg_id: object, err: RpcError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.data is not None:
        error["data"] = err.data
    return {"jsonrpc": "2.0", "id": msg_id, "error": error}


def _result(msg_id: object, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _decode_header(value: str | None) -> str | None:
    """Header values may be base64-wrapped (``=?base64?…?=``) when not plain ASCII."""
    import base64

    if value and value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2]).decode()
        except ValueError:
            return None
    return value


class McpCore:
    """Answers MCP requests from a backend's tools; holds no per-client state."""

    def __init__(self, backend: ToolBackend) -> None:
        self._backend = backend

    # -- handshake era ------------------------------------------------------------

    @staticmethod
    def negotiate(msg: Incoming) -> tuple[str, dict[str, Any]]:
        """``initialize``: the version to speak and the result to send."""
        asked = msg.params.get("protocolVersion")
        version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[-1]
        return version, {
            "protocolVersion": version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": _SERVER_INFO,
            "instructions": _INSTRUCTIONS,
        }

    async def handshake_request(self, msg: Incoming) -> dict[str, Any]:
        """Answer a handshake-era request (after ``initialize``)."""
        try:
            return _result(msg.id, await self._dispatch(msg, modern=False))
        except RpcError as err:
            return error_message(msg.id, err)

    # -- stateless era ------------------------------------------------------------

    @staticmethod
    def is_modern(msg: Incoming, version_header: str | None) -> bool:
        if msg.envelope_version is not None:
            return True
        return version_header is not None and version_header not in HANDSHAKE_VERSIONS

    @staticmethod
    def check_envelope(msg: Incoming, headers: Mapping[str, str] | None) -> None:
        """The stateless era's checks, in the spec's order; ``headers`` None off HTTP.

        Raises:
            RpcError: INVALID_PARAMS (no envelope), HEADER_MISMATCH, UNSUPPORTED_VERSION.
        """
        meta = msg.params.get("_meta")
        if not isinstance(meta, dict) or not {_VERSION_KEY, _CAPABILITIES_KEY} <= set(meta):
            raise RpcError(
                INVALID_PARAMS,
                f"params._meta must carry {_VERSION_KEY} and {_CAPABILITIES_KEY}",
            )
        version = meta[_VERSION_KEY]
        if headers is not None:
            if headers.get("mcp-protocol-version") != version:
                raise RpcError(HEADER_MISMATCH, "MCP-Protocol-Version header ≠ params._meta")
            if headers.get("mcp-method") != msg.method:
                raise RpcError(HEADER_MISMATCH, "Mcp-Method header ≠ the body's method")
            named = msg.params.get("uri" if msg.method == "resources/read" else "name")
            names_something = msg.method in ("tools/call", "prompts/get", "resources/read")
            if (
                names_something
                and named is not None
                and _decode_header(headers.get("mcp-name")) != named
            ):
                raise RpcError(HEADER_MISMATCH, "Mcp-Name header ≠ the body's name")
        if version not in MODERN_VERSIONS:
            raise RpcError(
                UNSUPPORTED_VERSION,
                f"protocol version {version!r} is not supported",
                {"supported": list(SUPPORTED_VERSIONS), "requested": str(version)},
            )

    async def modern_request(
        self, msg: Incoming, headers: Mapping[str, str] | None
    ) -> dict[str, Any]:
        """Answer a stateless-era request; errors become JSON-RPC error messages."""
        try:
            self.check_envelope(msg, headers)
            result = await self._dispatch(msg, modern=True)
            return _result(msg.id, {**result, "resultType": "complete"})
        except RpcError as err:
            return error_message(msg.id, err)

    # -- the methods ----------------------------------------------------------------

    async def _dispatch(self, msg: Incoming, *, modern: bool) -> dict[str, Any]:
        method = msg.method
        if method == "ping":
            return {}
        if method == "tools/list":
            listed: dict[str, Any] = {"tools": await self._backend.list_tools()}
            if modern:
                listed.update(ttlMs=0, cacheScope="private")
            return listed
        if method == "tools/call":
            return await self._call(msg.params)
        if method == "server/discover" and modern:
            return {
                "supportedVersions": list(SUPPORTED_VERSIONS),
                "capabilities": {"tools": {"listChanged": False}},
                "instructions": _INSTRUCTIONS,
                "ttlMs": 0,
                "cacheScope": "private",
                "_meta": {_SERVER_INFO_KEY: _SERVER_INFO},
            }
        raise RpcError(METHOD_NOT_FOUND, f"method {method!r} is not offered", {"method": method})

    async def _call(self, params: Mapping[str, Any]) -> dict[str, Any]:
        name, arguments = params.get("name"), params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, "tools/call needs a name and an arguments object")
        try:
            ok, data = await self._backend.call_tool(name, arguments)
        except UnknownTool as err:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}", err.details) from err
        structured = data if ok else {"error": data}
        return {
            "content": [{"type": "text", "text": json.dumps(structured, separators=(",", ":"))}],
            "structuredContent": structured,
            "isError": not ok,
        }
