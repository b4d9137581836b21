"""The guest agent's reply seam: garbage in gives a typed error, never a stray exception.

The pure checks (``agent_protocol``) take tables of hostile lines and values; the
client checks run a real :class:`GuestAgent` against a hostile peer on a real unix
socket, and show that the agent recovers once the peer answers properly again.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hypermachine.errors import GuestAgentUnavailable
from hypermachine.hypervisor.guest.agent_protocol import (
    MAX_DEPTH,
    AgentProtocolError,
    ExecStarted,
    ExecState,
    FileChunk,
    FilePosition,
    Handle,
    NetworkInterface,
    decode_reply,
    returned,
)
from hypermachine.hypervisor.guest.guest_agent import AgentTiming, GuestAgent


def _table(names: str, rows: list[tuple[Any, ...]]) -> pytest.MarkDecorator:
    """Parametrize over ``rows`` whose first item is the case's id."""
    return pytest.mark.parametrize(names, [row[1:] for row in rows], ids=[row[0] for row in rows])


def _nested(depth: int) -> bytes:
    return b'{"return":' + b"[" * depth + b"]" * depth + b',"id":1}'


GARBAGE_LINES = [
    ("nested-100000", _nested(100_000), "nested deeper"),
    ("nested-just-too-deep", _nested(MAX_DEPTH), "nested deeper"),
    ("array", b"[1,2,3]", "not a JSON object"),
    ("string", b'"hello"', "not a JSON object"),
    ("number", b"42", "not a JSON object"),
    ("not-json", b"{return: 1}", "not JSON"),
    ("random-bytes", random.Random(12).randbytes(300).replace(b"\n", b""), "not JSON"),
    ("id-is-a-string", b'{"return":{},"id":"1"}', "malformed reply: id"),
    ("id-is-a-bool", b'{"return":{},"id":true}', "malformed reply: id"),
    ("error-not-an-object", b'{"error":"boom","id":1}', "malformed reply: error"),
    ("error-desc-not-text", b'{"error":{"class":"X","desc":[1]},"id":1}', "error.desc"),
]


@_table("line,why", GARBAGE_LINES)
def test_garbage_lines_are_protocol_errors(line: bytes, why: str) -> None:
    with pytest.raises(AgentProtocolError, match=why):
        decode_reply(line)


def test_good_lines_decode() -> None:
    assert decode_reply(_nested(MAX_DEPTH - 1)).id == 1
    reply = decode_reply(b'{"return":{"pid":7},"id":5}')
    assert (reply.id, reply.value, reply.error_class) == (5, {"pid": 7}, None)
    refused = decode_reply(b'{"error":{"class":"GenericError","desc":"no"},"id":6}')
    assert (refused.error_class, refused.error_desc) == ("GenericError", "no")


GARBAGE_RETURNS: list[tuple[str, Any, object, str]] = [
    ("exec-status-list", ExecState, [1, "two", None], "valid dictionary"),
    ("exec-status-bad-base64", ExecState, {"exited": True, "out-data": "%% no %%"}, "base64"),
    ("exec-status-b64-number", ExecState, {"exited": True, "err-data": 5}, "base64"),
    ("exec-status-exited-text", ExecState, {"exited": "yes"}, "exited"),
    ("exec-status-exitcode-float", ExecState, {"exited": True, "exitcode": 1.5}, "exitcode"),
    ("exec-pid-missing", ExecStarted, {}, "pid"),
    ("exec-pid-text", ExecStarted, {"pid": "7"}, "pid"),
    ("file-read-bad-base64", FileChunk, {"count": 3, "buf-b64": "@@@", "eof": True}, "base64"),
    ("file-seek-negative", FilePosition, {"position": -1, "eof": False}, "position"),
    ("handle-bool", Handle, True, "integer"),
    ("handle-object", Handle, {"handle": 1}, "integer"),
    ("interfaces-object", list[NetworkInterface], {"name": "eth0"}, "valid list"),
    ("interfaces-numbers", list[NetworkInterface], [1, 2], "valid dictionary"),
    (
        "interface-counter-text",
        list[NetworkInterface],
        [{"name": "eth0", "statistics": {"rx-bytes": "lots"}}],
        "rx-bytes",
    ),
]


@_table("kind,value,why", GARBAGE_RETURNS)
def test_garbage_returns_are_protocol_errors(kind: Any, value: object, why: str) -> None:
    with pytest.raises(AgentProtocolError, match=why):
        returned(kind, value, "guest-x")


def test_good_returns_are_typed() -> None:
    state = returned(ExecState, {"exited": True, "exitcode": 3, "out-data": "aGk=", "x": 1}, "c")
    assert (state.exited, state.exitcode, state.out_data, state.err_data) == (True, 3, b"hi", b"")
    nics = returned(list[NetworkInterface], [{"name": "eth0", "statistics": {"rx-bytes": 9}}], "c")
    assert nics[0].statistics is not None and nics[0].statistics.rx_bytes == 9
    assert returned(Handle, 4, "c") == 4


# -- the client against a hostile peer on a real socket ------------------------------

MAX_LINE = 64 * 1024
TIMING = AgentTiming(
    sync_timeout_s=1.0,
    command_timeout_s=5.0,
    ping_interval_s=30.0,
    retry_s=0.05,
    max_line_bytes=MAX_LINE,
)
# What the peer answers to the command under test (``{id}`` is the request's id).
HOSTILE_REPLIES = [
    ("nested", b'{"return":' + b"[" * 5000 + b"]" * 5000 + b',"id":{id}}\n', "nested deeper"),
    ("non-object-line", b"[1,2,3]\n", "not a JSON object"),
    ("non-object-return", b'{"return":[1,"two",null],"id":{id}}\n', "invalid reply"),
    ("bad-base64", b'{"return":{"exited":true,"out-data":"%%"},"id":{id}}\n', "base64"),
    ("endless-line", b"\0" * (MAX_LINE + 4096), "longer than"),
    ("random-bytes", random.Random(7).randbytes(4096).replace(b"\n", b"") + b"\n", "not JSON"),
]


async def _hostile_peer(stream: trio.SocketStream, hostile: bytes) -> None:
    """qemu-ga's handshake, then ``hostile`` for the first guest-exec-status, then honest."""
    buffer, attacked = b"", False
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line.lstrip(b"\xff"))
            command, msg_id = request["execute"], request.get("id")
            if command == "guest-sync-delimited":
                answer = b"\xff" + json.dumps({"return": request["arguments"]["id"]}).encode()
                await stream.send_all(answer + b"\n")
            elif command == "guest-exec-status" and not attacked:
                attacked = True
                await stream.send_all(hostile.replace(b"{id}", str(msg_id).encode()))
            else:
                value = {"exited": True, "exitcode": 0} if command == "guest-exec-status" else {}
                reply = {"return": value, "id": msg_id}
                await stream.send_all(json.dumps(reply).encode() + b"\n")


class AgentChanges:
    """The agent's change callback, as something to wait on."""

    def __init__(self) -> None:
        self._changed = trio.Event()

    def __call__(self, _agent: GuestAgent, _reason: str | None) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def connected(self, agent: GuestAgent, timeout_s: float = 10) -> bool:
        """True once the agent answers; False if it has not within ``timeout_s``."""
        with trio.move_on_after(timeout_s):
            while not agent.connected:
                await self._changed.wait()
        return agent.connected


CHANGES: dict[str, AgentChanges] = {}


@pytest.fixture
async def agent_against(tmp_path: Path) -> AsyncIterator[Callable[[bytes], Any]]:
    async with trio.open_nursery() as nursery:

        async def start(hostile: bytes) -> GuestAgent:
            path = tmp_path / "qga.sock"
            listener = trio.socket.socket(trio.socket.AF_UNIX)
            await listener.bind(str(path))
            listener.listen()
            listeners = [trio.SocketListener(listener)]
            handler = lambda stream: _hostile_peer(stream, hostile)  # noqa: E731
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            changes = CHANGES["vm-test"] = AgentChanges()
            agent = GuestAgent("vm-test", path, TIMING, changes)
            nursery.start_soon(agent.run)
            assert await changes.connected(agent), "the agent never connected"
            return agent

        yield start
        nursery.cancel_scope.cancel()


@_table("hostile,why", HOSTILE_REPLIES)
async def test_hostile_reply_is_an_agent_error_and_the_agent_recovers(
    agent_against: Callable[[bytes], Any], hostile: bytes, why: str
) -> None:
    agent: GuestAgent = await agent_against(hostile)
    with pytest.raises(GuestAgentUnavailable, match=why):
        await agent.call("guest-exec-status", {"pid": 1}, reply=ExecState)
    assert agent.info.last_error is not None and why in agent.info.last_error
    # The channel is resynced and the agent answers again; the reason stays on record.
    assert await CHANGES["vm-test"].connected(agent), agent.info
    state = await agent.call("guest-exec-status", {"pid": 1}, reply=ExecState)
    assert (state.exited, state.exitcode) == (True, 0)
    assert agent.info.connected and why in (agent.info.last_error or "")
