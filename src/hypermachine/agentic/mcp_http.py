"""MCP's Streamable HTTP transport at ``/mcp`` (answers are plain JSON, no SSE).

Handshake-era clients get an ``Mcp-Session-Id`` from ``initialize`` and must send
it back (DELETE ends it); stateless-era requests need no session. A browser
page from another origin is refused (``Origin`` must be a loopback address or
one in ``allowed_origins``), against DNS-rebinding attacks on a local server. The server
sends no unsolicited messages, so ``GET /mcp`` answers 405.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Collection, Mapping
from typing import Any

from quart import Response, request

from ..operations.dispatch import Dispatcher
from ..security.caller import current_caller
from ..security.web import origin_allowed
from .execute import Shape, ToolCall, run_call
from .faces import mcp_tools
from .mcp import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    UNSUPPORTED_VERSION,
    McpCore,
    RpcError,
    error_message,
    parse_message,
)

__all__ = ["LocalBackend", "McpHttp"]

_SESSION_HEADER = "Mcp-Session-Id"
_MAX_SESSIONS = 1024
_STATUS = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    UNSUPPORTED_VERSION: 400,
    METHOD_NOT_FOUND: 404,
}


class LocalBackend:
    """Tools from this server's registry, run through its dispatcher as the request's
    caller (the one every other face uses)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    async def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = mcp_tools(self._dispatcher.registry)["tools"]
        return tools

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        registry = self._dispatcher.registry
        registry.tool(name)  # UnknownTool is a protocol error in MCP, not a tool result
        dispatch = self._dispatcher.bound(current_caller())
        outcome = await run_call(registry, dispatch, ToolCall(Shape.NATIVE, name, arguments))
        return outcome.ok, outcome.data


def _json(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body), status=status, content_type="application/json", headers=headers or {}
    )


def _rpc_error(status: int, code: int, message: str, msg_id: object = None) -> Response:
    return _json(error_message(msg_id, RpcError(code, message)), status)


class McpHttp:
    """The ``/mcp`` endpoint: sessions for the handshake era, none for the stateless one."""

    def __init__(self, core: McpCore, allowed_origins: Collection[str] = ()) -> None:
        self._core = core
        self._allowed_origins = allowed_origins
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def _guard(self) -> Response | None:
        if not origin_allowed(request.headers.get("Origin"), self._allowed_origins):
            return _rpc_error(403, INVALID_REQUEST, "Origin not allowed")
        return None

    async def post(self) -> Response:
        refused = self._guard()
        if refused is not None:
            return refused
        accept = request.headers.get("Accept", "*/*")
        if not any(kind in accept for kind in ("application/json", "*/*")):
            return _rpc_error(406, INVALID_REQUEST, "Accept must include application/json")
        if request.mimetype != "application/json":
            return _rpc_error(415, INVALID_REQUEST, "send application/json")
        try:
            raw = json.loads(await request.get_data(as_text=False))
        except (ValueError, RecursionError):
            return _rpc_error(400, PARSE_ERROR, "the body is not valid JSON")
        try:
            msg = parse_message(raw)
        except RpcError as err:
            return _rpc_error(400, err.code, err.message)
        headers = {k.lower(): v for k, v in request.headers.items()}
        if self._core.is_modern(msg, headers.get("mcp-protocol-version")):
            if not msg.is_request:
                return Response("", status=202)
            reply = await self._core.modern_request(msg, headers)
            status = _STATUS.get(reply.get("error", {}).get("code"), 200)
            return _json(reply, status)
        if msg.method == "initialize" and msg.is_request:
            return self._initialize(msg)
        return await self._in_session(msg, headers.get("mcp-session-id"))

    def _initialize(self, msg: Any) -> Response:
        version, result = self._core.negotiate(msg)
        session = secrets.token_hex(16)
        self._sessions[session] = version
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)
        reply = {"jsonrpc": "2.0", "id": msg.id, "result": result}
        return _json(reply, headers={_SESSION_HEADER: session})

    async def _in_session(self, msg: Any, session: str | None) -> Response:
        if session is None:
            return _rpc_error(400, INVALID_REQUEST, "initialize first (no Mcp-Session-Id)", msg.id)
        if session not in self._sessions:
            return _rpc_error(404, INVALID_REQUEST, "unknown or ended session", msg.id)
        self._sessions.move_to_end(session)
        if not msg.is_request:
            return Response("", status=202)
        return _json(await self._core.handshake_request(msg))

    def delete(self) -> Response:
        refused = self._guard()
        if refused is not None:
            return refused
        session = request.headers.get(_SESSION_HEADER)
        if session is None or self._sessions.pop(session, None) is None:
            return _rpc_error(404, INVALID_REQUEST, "unknown or ended session")
        return Response("", status=204)

    def get(self) -> Response:
        refused = self._guard()
        if refused is not None:
            return refused
        response = _rpc_error(405, INVALID_REQUEST, "this server sends no unsolicited messages")
        response.headers["Allow"] = "POST, DELETE"
        return response
