"""The first exec after the agent answers (a restored guest's, under TCG every request
costs it tens of ms while its translation cache fills): nothing of ours goes ahead of
it, and its end is seen quickly.

* Once a sync is answered the command goes; qemu-ga's version (``guest-info``) is
  asked afterwards, and a guest that refuses ``guest-info`` stays usable.
* qemu-ga has no exit event, so the server asks ``guest-exec-status`` every 10 ms
  during the command's first 100 ms. Those 100 ms count from when the guest started
  the command, not from the request: a guest whose ``guest-exec`` is slow to answer
  (≈ 200 ms for a restored guest) must still have a short command's end seen quickly.

The guest here is a stand-in qemu-ga on a real socket, in virtual time.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import trio
import trio.testing

from hypermachine.events import EventLog
from hypermachine.hypervisor.guest.service import GuestService
from hypermachine.models import (
    ExecRequest,
    ExecResult,
    ExecStatus,
    GuestAgentInfo,
    Vm,
    VmState,
)
from hypermachine.store import Store
from support import make_settings

EXEC_ANSWER_S = 0.2  # how long the stand-in takes to answer guest-exec
RUNS_FOR_S = 0.15  # how long its command runs once started


class SlowToStartAgent:
    """qemu-ga answering ``guest-exec`` after EXEC_ANSWER_S; records each status poll."""

    def __init__(self, *, info_answer: bytes | None = None) -> None:
        self.info_answer = info_answer  # a line to answer guest-info with ({id}: its id)
        self.started_at: float | None = None
        self.polls: list[float] = []
        self.commands: list[str] = []  # after the sync, in the order they came

    def _value(self, command: str) -> object:
        now = trio.current_time()
        if command == "guest-info":
            return {"version": "stand-in"}
        if command == "guest-exec":
            self.started_at = now
            return {"pid": 7}
        if command == "guest-exec-status":
            self.polls.append(now)
            assert self.started_at is not None
            if now - self.started_at >= RUNS_FOR_S:
                return {"exited": True, "exitcode": 0}
            return {"exited": False}
        return {}

    async def serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        while chunk := await stream.receive_some(65536):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line.lstrip(b"\xff"))
                command = request["execute"]
                if command == "guest-sync-delimited":
                    sync = json.dumps({"return": request["arguments"]["id"]}).encode()
                    await stream.send_all(b"\xff" + sync + b"\n")
                    continue
                self.commands.append(command)
                if command == "guest-exec":
                    await trio.sleep(EXEC_ANSWER_S)
                if command == "guest-info" and self.info_answer is not None:
                    await stream.send_all(self.info_answer.replace(b"{id}", b"%d" % request["id"]))
                    continue
                reply = {"return": self._value(command), "id": request["id"]}
                await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _exec_against(
    guest: SlowToStartAgent, tmp_path: Path, *, then_again: bool = False
) -> tuple[ExecResult, GuestAgentInfo]:
    """One ``true`` through a GuestService whose VM's agent is ``guest`` (it must exit
    0); then waits (virtual time) until the agent's version is asked and answered, and
    returns the agent's info as it is then (``then_again``: one more ``true`` after)."""
    socket_path = tmp_path / "qga.sock"
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(str(socket_path))
    listener.listen()
    events = EventLog(Store(tmp_path / "db.sqlite3"), retain=100)
    running = cast(Vm, SimpleNamespace(state=VmState.RUNNING))
    settings = make_settings(tmp_path / "data", tmp_path / "cache")
    service = GuestService(settings, events, lambda _vm_id: running)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, guest.serve, [trio.SocketListener(listener)])
        nursery.start_soon(service.attend, "vm-1", socket_path)
        result = await service.exec("vm-1", ExecRequest(command=["true"]), wait_agent_s=10)
        with trio.move_on_after(10):
            while "guest-info" not in guest.commands:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()  # its answer is read
        info = service.info("vm-1")
        if then_again:
            again = await service.exec("vm-1", ExecRequest(command=["true"]), wait_agent_s=10)
            assert again.status is ExecStatus.EXITED, again
        nursery.cancel_scope.cancel()
    assert result.status is ExecStatus.EXITED and result.exit_code == 0, result
    return result, info


async def test_the_first_command_goes_before_the_agents_version_is_asked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    guest = SlowToStartAgent()
    _, info = await _exec_against(guest, tmp_path)
    assert guest.commands[0] == "guest-exec", guest.commands
    assert "guest-info" in guest.commands, guest.commands
    assert info.version == "stand-in" and info.connected, info


async def test_a_guest_refusing_guest_info_stays_usable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    refusal = b'{"error": {"class": "GenericError", "desc": "blocked"}, "id": {id}}\n'
    guest = SlowToStartAgent(info_answer=refusal)
    _, info = await _exec_against(guest, tmp_path)
    assert "guest-info" in guest.commands, guest.commands
    assert info.version is None and info.connected, info


async def test_garbage_for_guest_info_is_a_violation_and_the_agent_recovers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    guest = SlowToStartAgent(info_answer=b'{"return": {"version": 7}, "id": {id}}\n')
    _, info = await _exec_against(guest, tmp_path, then_again=True)
    assert not info.connected and info.last_error is not None, info
    assert "version" in info.last_error, info


async def test_a_command_is_polled_every_10_ms_in_its_own_first_100_ms(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    guest = SlowToStartAgent()
    await _exec_against(guest, tmp_path)
    assert guest.started_at is not None
    since_start = [t - guest.started_at for t in guest.polls]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(since_start) if a < 0.1]
    assert gaps and max(gaps) <= 0.01, since_start
    seen_late = guest.polls[-1] - guest.started_at - RUNS_FOR_S
    assert seen_late <= 0.1, seen_late  # past 100 ms the polls thin out, at most 100 ms apart
