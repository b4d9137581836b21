"""``hypermachine mcp``: MCP over stdio for desktop agent hosts, forwarding to a server.

The host starts this process and speaks newline-delimited JSON-RPC on its
stdin/stdout. Tools are listed from the server's ``/agentic/tools/mcp`` and run
through its ``/agentic/execute``, with the API key as a bearer token, so the
server stays the only place VMs are managed. Requests are answered concurrently
(a long ``wait_for_vm`` does not hold up a ``ping``); nothing but protocol
messages is written to stdout.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import trio

from ..errors import UnknownTool
from .auth import auth_headers
from .mcp import PARSE_ERROR, McpCore, RpcError, error_message, parse_message

__all__ = ["RemoteBackend", "answer_line", "serve_stdio"]

log = logging.getLogger(__name__)

_INTERNAL_ERROR = -32603
_MAX_LINE = 4 * 1024 * 1024
_TIMEOUT = httpx.Timeout(30.0, read=3700.0)  # a tool may wait up to an hour (wait_for_vm)


class RemoteBackend:
    """Tools of a running HyperMachine server, reached over HTTP."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def list_tools(self) -> list[dict[str, Any]]:
        try:
            response = await self._client.get("/agentic/tools/mcp")
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise RpcError(_INTERNAL_ERROR, f"HyperMachine server unavailable: {err}") from err
        tools: list[dict[str, Any]] = response.json()["tools"]
        return tools

    async def call_tool(
        self, name: str, arguments: Mapping[str, Any]
    ) -> tuple[bool, dict[str, Any]]:
        try:
            response = await self._client.post(
                "/agentic/execute", json={"name": name, "arguments": dict(arguments)}
            )
            answer = response.json()
        except (httpx.HTTPError, ValueError) as err:
            return False, {
                "code": "INTERNAL_ERROR",
                "message": f"HyperMachine server unavailable: {err}",
                "details": {},
            }
        if response.status_code != 200:  # refused before the tool ran (e.g. auth)
            return False, answer.get("error", {"code": "INTERNAL_ERROR", "message": str(answer)})
        if answer.get("is_error") and answer["error"].get("code") == UnknownTool.code:
            raise UnknownTool(answer["error"]["message"], **answer["error"].get("details", {}))
        ok = not answer.get("is_error")
        data: dict[str, Any] = answer["result"] if ok else answer["error"]
        return ok, data


async def answer_line(core: McpCore, line: bytes) -> dict[str, Any] | None:
    """The reply to one line of input, or None (a notification, or a blank line)."""
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except ValueError:
        return error_message(None, RpcError(PARSE_ERROR, "not valid JSON"))
    try:
        msg = parse_message(raw)
    except RpcError as err:
        return error_message(raw.get("id") if isinstance(raw, dict) else None, err)
    if not msg.is_request:
        return None
    if core.is_modern(msg, None):
        return await core.modern_request(msg, None)
    if msg.method == "initialize":
        _, result = core.negotiate(msg)
        return {"jsonrpc": "2.0", "id": msg.id, "result": result}
    return await core.handshake_request(msg)


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    buffer = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buffer:
                yield buffer
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line
        if len(buffer) > _MAX_LINE:
            log.error("dropping an input line longer than %d bytes", _MAX_LINE)
            buffer = b""


async def serve_stdio(server: str, api_key: str | None) -> None:
    """Answer MCP on stdin/stdout until stdin closes."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    write_lock = trio.Lock()

    async def reply_to(core: McpCore, line: bytes) -> None:
        reply = await answer_line(core, line)
        if reply is not None:
            async with write_lock:
                await stdout.send_all(json.dumps(reply).encode() + b"\n")

    headers = auth_headers(api_key)
    async with (
        stdin,
        stdout,
        httpx.AsyncClient(base_url=server, headers=headers, timeout=_TIMEOUT) as client,
        trio.open_nursery() as nursery,
    ):
        core = McpCore(RemoteBackend(client))
        async for line in _lines(stdin):
            nursery.start_soon(reply_to, core, line)
