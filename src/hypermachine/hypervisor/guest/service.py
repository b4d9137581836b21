"""Reaching into guests through their agents: commands (waited or streamed) and files.

The operations the REST API, agent tools and scripts share. Each VM's
:class:`~.guest_agent.GuestAgent` runs in that VM's supervisor nursery
(:meth:`GuestService.attend`); commands started with ``wait: false`` run as
tasks of the agent, so they end with the VM and never outlive their owner.

Exec has two modes (docs/guest.md):

* ``wait: true`` — qemu-ga's ``guest-exec`` with ``capture-output``: exact bytes,
  nothing written in the guest, output known when the command ends.
* ``wait: false`` — the command runs under ``/bin/sh -c 'exec "$@" >>F.out 2>>F.err'``
  and the server reads the two guest temp files as they grow (``guest-file-read``
  at a remembered offset), so output can be polled and streamed while it runs.
  qemu-ga itself returns output only at the end, hence the wrapper.
"""

from __future__ import annotations

import base64
import codecs
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ...config import Settings
from ...errors import (
    ExecNotFound,
    GuestAgentUnavailable,
    GuestFileTooLarge,
    GuestOperationFailed,
    GuestPathNotFound,
    InvalidState,
    ValidationFailed,
)
from ...events import EventLog
from ...models import (
    EventType,
    ExecOutput,
    ExecRequest,
    ExecResult,
    ExecStatus,
    FileContent,
    FileReadRequest,
    FileWriteRequest,
    FileWritten,
    GuestAgentInfo,
    InterfaceStats,
    Vm,
    VmState,
)
from ...store import utcnow
from .agent_protocol import (
    Done,
    ExecStarted,
    ExecState,
    FileChunk,
    FilePosition,
    Handle,
    NetworkInterface,
)
from .guest_agent import AgentRefused, AgentTiming, GuestAgent, unavailable

__all__ = ["GuestFileReader", "GuestService"]

log = logging.getLogger(__name__)

_DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
# $0 is the temp-file stem; "$@" the caller's argv (never parsed by the shell).
_WRAPPER = 'exec "$@" >>"$0.out" 2>>"$0.err"'
# A command's status is polled (qemu-ga has no exit event): every 10 ms for its first
# 100 ms, where short commands end (`true` takes 5-70 ms under TCG), then less and less
# often (each poll costs the guest a request). The 100 ms count from when the guest
# started it: a restored guest's first guest-exec alone takes ~200 ms under TCG.
_POLL_FIRST_S = 0.01
_POLL_STEADY_S = 0.1
_AGENT_STATES = (VmState.STARTING, VmState.RUNNING)
# A caller willing to wait for the agent also waits through these (on the way to running).
_BECOMING = (VmState.CREATING, VmState.STARTING)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _seek(handle: int, offset: int, whence: str) -> dict[str, object]:
    return {"handle": handle, "offset": offset, "whence": whence}


def _text_or_b64(data: bytes) -> tuple[str | None, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, _b64(data)


def _refusal(err: AgentRefused, path: str) -> GuestPathNotFound | GuestOperationFailed:
    if "No such file or directory" in err.desc:
        return GuestPathNotFound(f"no such file or folder in the guest: {path}", path=path)
    return GuestOperationFailed(f"the guest agent refused {err.command}: {err.desc}", path=path)


@dataclass
class _Output:
    limit: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if len(chunk) > room:
            self.truncated = True
        self.data += chunk[: max(room, 0)]

    @property
    def full(self) -> bool:
        return len(self.data) >= self.limit


@dataclass
class _Job:
    """One command in a guest; changes are broadcast to pollers and streamers."""

    id: str
    vm_id: str
    command: list[str]
    timeout_s: float
    streamed: bool
    stdout: _Output
    stderr: _Output
    started_at: datetime = field(default_factory=utcnow)
    t0: float = field(default_factory=trio.current_time)
    status: ExecStatus = ExecStatus.RUNNING
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    done: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)

    def announce(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def finish(self, status: ExecStatus, error: str | None = None) -> None:
        if self.done.is_set():
            return
        self.status, self.error = status, error
        self.finished_at = utcnow()
        self.duration_s = trio.current_time() - self.t0
        self.done.set()
        self.announce()

    def result(self) -> ExecResult:
        out_text, out_b64 = _text_or_b64(bytes(self.stdout.data))
        err_text, err_b64 = _text_or_b64(bytes(self.stderr.data))
        duration = self.duration_s if self.duration_s is not None else trio.current_time() - self.t0
        return ExecResult(
            exec_id=self.id,
            vm_id=self.vm_id,
            command=self.command,
            status=self.status,
            exit_code=self.exit_code,
            signal=self.signal,
            stdout=out_text,
            stderr=err_text,
            stdout_b64=out_b64,
            stderr_b64=err_b64,
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            truncated=self.stdout.truncated or self.stderr.truncated,
            streamed=self.streamed,
            duration_ms=int(duration * 1000),
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
        )


@dataclass
class _TailedFile:
    """A guest temp file a streamed command appends to, read from ``offset`` on."""

    path: str
    handle: int
    output: _Output
    offset: int = 0


class GuestFileReader:
    """An open guest file, read in chunks; closes its handle when exhausted."""

    def __init__(self, agent: GuestAgent, handle: int, size: int, chunk: int, limit: int) -> None:
        self.size = size
        self._agent, self._handle, self._chunk, self._limit = agent, handle, chunk, limit

    async def chunks(self) -> AsyncIterator[bytes]:
        total = 0
        try:
            while True:
                reply = await self._agent.call(
                    "guest-file-read",
                    {"handle": self._handle, "count": self._chunk},
                    reply=FileChunk,
                )
                total += len(reply.data)
                if total > self._limit:
                    raise GuestFileTooLarge("the guest file grew past the size limit")
                if reply.data:
                    yield reply.data
                if reply.eof or not reply.data:
                    return
        except AgentRefused as err:
            raise GuestOperationFailed(f"reading the guest file failed: {err.desc}") from err
        finally:
            await self._agent.close_quietly("guest-file-close", {"handle": self._handle})


class GuestService:
    """Exec and files in guests, and the live status of their agents."""

    def __init__(self, settings: Settings, events: EventLog, get_vm: Callable[[str], Vm]) -> None:
        self._settings = settings
        self._events = events
        self._get_vm = get_vm
        self._agents: dict[str, GuestAgent] = {}
        self._jobs: dict[str, OrderedDict[str, _Job]] = {}
        self._changed = trio.Event()
        self._timing = AgentTiming(
            sync_timeout_s=settings.guest_agent_sync_timeout_s,
            command_timeout_s=settings.guest_agent_command_timeout_s,
            ping_interval_s=settings.guest_agent_ping_interval_s,
            retry_s=settings.guest_agent_retry_s,
            max_line_bytes=settings.guest_agent_max_line_bytes,
        )
        self._faults: dict[str, GuestAgentInfo] = {}  # agents whose own task failed
        events.add_listener(lambda _event: self._announce())  # waiters see state changes too

    # -- agents --------------------------------------------------------------------

    async def attend(self, vm_id: str, socket_path: Path) -> None:
        """The VM's companion task: keep its agent connected while QEMU runs."""
        agent = GuestAgent(vm_id, socket_path, self._timing, self._agent_changed)
        self._agents[vm_id] = agent
        self._faults.pop(vm_id, None)
        self._announce()
        try:
            await agent.run()
        finally:
            if self._agents.get(vm_id) is agent:
                del self._agents[vm_id]
            self._announce()

    def agent_faulted(self, vm_id: str, reason: str) -> None:
        """The fault handler of the VM's agent task (faults.py): the agent is unavailable
        with ``reason`` until the VM next starts; the VM itself carries on."""
        agent = self._agents.pop(vm_id, None)
        info = agent.info if agent is not None else GuestAgentInfo()
        self._faults[vm_id] = info.model_copy(
            update={"connected": False, "reason": reason, "last_error": reason}
        )
        self._events.record(EventType.GUEST_AGENT_DISCONNECTED, vm_id, reason=reason)
        self._announce()

    def guest_reset(self, vm_id: str) -> None:
        """The guest was reset: its agent is gone with the old boot, so no command may
        go to it until the new boot's agent answers a sync (a waiting exec waits)."""
        agent = self._agents.get(vm_id)
        if agent is not None:
            agent.session_lost("the guest was reset")

    def _agent_changed(self, agent: GuestAgent, reason: str | None) -> None:
        if agent.connected:
            self._events.record(EventType.GUEST_AGENT_CONNECTED, agent.vm_id)
        else:
            self._events.record(EventType.GUEST_AGENT_DISCONNECTED, agent.vm_id, reason=reason)
        self._announce()

    def _announce(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def info(self, vm_id: str) -> GuestAgentInfo:
        agent = self._agents.get(vm_id)
        return agent.info if agent is not None else self._faults.get(vm_id, GuestAgentInfo())

    def forget(self, vm_id: str) -> None:
        """Drop the command records of a deleted VM."""
        self._jobs.pop(vm_id, None)
        self._faults.pop(vm_id, None)

    async def agent(self, vm_id: str, wait_s: float = 0) -> GuestAgent:
        """The VM's connected agent, waiting up to ``wait_s`` for it.

        Raises:
            VmNotFound, InvalidState (the VM is not running),
            GuestAgentUnavailable (no agent answers).
        """
        wait_s = min(wait_s, self._settings.wait_timeout_max_s)
        with trio.move_on_after(wait_s):
            while True:
                changed = self._changed
                vm = self._get_vm(vm_id)
                if vm.state in _BECOMING and wait_s > 0:
                    await changed.wait()
                    continue
                if vm.state not in _AGENT_STATES:
                    raise InvalidState(
                        f"the guest agent needs a running VM; it is {vm.state.value}",
                        current=vm.state.value,
                        allowed=["running"],
                    )
                agent = self._agents.get(vm_id)
                if agent is not None and agent.connected:
                    return agent
                await changed.wait()
        agent = self._agents.get(vm_id)
        if agent is not None:
            raise agent.unavailable()
        if vm_id in self._faults:
            raise unavailable(vm_id, self._faults[vm_id].reason)
        raise GuestAgentUnavailable("the VM's guest agent channel is not open", vm_id=vm_id)

    # -- exec ------------------------------------------------------------------------

    async def exec(
        self, vm_id: str, request: ExecRequest, *, wait_agent_s: float = 0
    ) -> ExecResult:
        """Run a command in the guest; with ``wait`` return its outcome, else at once.

        Raises:
            ValidationFailed (timeout above the maximum), VmNotFound, InvalidState,
            GuestAgentUnavailable, GuestOperationFailed (the guest could not start it).
        """
        timeout = request.timeout_s or self._settings.exec_timeout_default_s
        if timeout > self._settings.exec_timeout_max_s:
            raise ValidationFailed(
                f"timeout_s must be at most {self._settings.exec_timeout_max_s:g}",
                field="timeout_s",
            )
        agent = await self.agent(vm_id, wait_agent_s)
        limit = self._settings.exec_output_max_bytes
        job = _Job(
            id=f"ex-{uuid.uuid4().hex[:12]}",
            vm_id=vm_id,
            command=list(request.command),
            timeout_s=timeout,
            streamed=not request.wait,
            stdout=_Output(limit),
            stderr=_Output(limit),
        )
        if job.streamed:
            pid, files = await self._launch_streamed(agent, job, request)
        else:
            pid, files = await self._launch(agent, request), []
        self._remember(job)
        agent.start_soon(partial(self._follow, agent, job, pid, files))
        if request.wait:
            await job.done.wait()
        return job.result()

    def _exec_arguments(self, request: ExecRequest, argv: list[str]) -> dict[str, Any]:
        env = {**_DEFAULT_ENV, **request.env}
        arguments: dict[str, Any] = {
            "path": argv[0],
            "arg": argv[1:],
            "env": [f"{k}={v}" for k, v in env.items()],
        }
        if request.stdin is not None:
            arguments["input-data"] = _b64(request.stdin.encode())
        elif request.stdin_b64 is not None:
            arguments["input-data"] = request.stdin_b64
        return arguments

    async def _guest_exec(self, agent: GuestAgent, arguments: dict[str, Any], shown: str) -> int:
        try:
            reply = await agent.call("guest-exec", arguments, reply=ExecStarted)
        except AgentRefused as err:
            raise GuestOperationFailed(
                f"the guest could not run {shown!r}: {err.desc}", program=shown
            ) from err
        return reply.pid

    async def _launch(self, agent: GuestAgent, request: ExecRequest) -> int:
        arguments = self._exec_arguments(request, list(request.command))
        arguments["capture-output"] = True
        return await self._guest_exec(agent, arguments, request.command[0])

    async def _launch_streamed(
        self, agent: GuestAgent, job: _Job, request: ExecRequest
    ) -> tuple[int, list[_TailedFile]]:
        stem = f"/tmp/hm-exec-{job.id}"
        for suffix in (".out", ".err"):  # create them empty, proving /tmp is writable
            handle = await self._open(agent, stem + suffix, "w")
            await agent.close_quietly("guest-file-close", {"handle": handle})
        argv = ["/bin/sh", "-c", _WRAPPER, stem, *request.command]
        pid = await self._guest_exec(agent, self._exec_arguments(request, argv), request.command[0])
        files = [
            _TailedFile(stem + ".out", await self._open(agent, stem + ".out", "r"), job.stdout),
            _TailedFile(stem + ".err", await self._open(agent, stem + ".err", "r"), job.stderr),
        ]
        return pid, files

    async def _open(self, agent: GuestAgent, path: str, mode: str) -> int:
        try:
            return await agent.call("guest-file-open", {"path": path, "mode": mode}, reply=Handle)
        except AgentRefused as err:
            raise _refusal(err, path) from err

    async def _follow(
        self, agent: GuestAgent, job: _Job, pid: int, files: list[_TailedFile]
    ) -> None:
        """Poll the command until it ends (no event exists for that), then clean up.

        The job always ends: on a failure of this task too (its owner, the agent,
        then reports the fault), so no waiter is left hanging.
        """
        try:
            await self._poll(agent, job, pid, files)
        except GuestAgentUnavailable as err:
            job.finish(ExecStatus.FAILED, err.message)
        except AgentRefused as err:
            job.finish(ExecStatus.FAILED, f"the guest agent refused {err.command}: {err.desc}")
        finally:
            job.finish(
                ExecStatus.FAILED,
                "the VM stopped, or its guest agent failed, before the command finished",
            )
        if files:
            await self._remove_files(agent, files)

    async def _poll(self, agent: GuestAgent, job: _Job, pid: int, files: list[_TailedFile]) -> None:
        interval = _POLL_FIRST_S
        started = trio.current_time()
        deadline = job.t0 + job.timeout_s
        killed_at: float | None = None
        while True:
            status = await agent.call("guest-exec-status", {"pid": pid}, reply=ExecState)
            grew = await self._drain(agent, files)
            if status.exited:
                self._take_exit(job, status, timed_out=killed_at is not None)
                return
            now = trio.current_time()
            if killed_at is None and now >= deadline:
                await self._kill(agent, pid)
                killed_at = now
            elif killed_at is not None and now - killed_at > self._settings.kill_grace_s:
                job.finish(ExecStatus.TIMED_OUT, "the command did not end after SIGKILL")
                return
            if grew:
                job.announce()
            await trio.sleep(min(interval, max(deadline - now, 0.01)))
            if trio.current_time() - started >= _POLL_STEADY_S:
                interval = min(interval * 2, self._settings.exec_poll_max_s)

    def _take_exit(self, job: _Job, status: ExecState, *, timed_out: bool) -> None:
        job.stdout.add(status.out_data)
        job.stderr.add(status.err_data)
        job.stdout.truncated |= status.out_truncated
        job.stderr.truncated |= status.err_truncated
        job.exit_code = status.exitcode
        job.signal = status.signal
        if timed_out:
            job.finish(ExecStatus.TIMED_OUT, f"killed after timeout_s={job.timeout_s:g}")
        else:
            job.finish(ExecStatus.EXITED)

    async def _drain(self, agent: GuestAgent, files: list[_TailedFile]) -> bool:
        """Read what the streamed command appended since last time; True if anything."""
        grew = False
        chunk = self._settings.file_chunk_bytes
        for tailed in files:
            while not tailed.output.full:
                await agent.call(
                    "guest-file-seek",
                    _seek(tailed.handle, tailed.offset, "set"),
                    reply=FilePosition,
                )
                reply = await agent.call(
                    "guest-file-read", {"handle": tailed.handle, "count": chunk}, reply=FileChunk
                )
                data = reply.data
                if not data:
                    break
                tailed.output.add(data)
                tailed.offset += len(data)
                grew = True
                if len(data) < chunk:
                    break
        return grew

    async def _kill(self, agent: GuestAgent, pid: int) -> None:
        try:
            await agent.call(
                "guest-exec", {"path": "kill", "arg": ["-KILL", str(pid)]}, reply=ExecStarted
            )
        except AgentRefused as err:
            log.warning("%s: could not kill guest pid %d: %s", agent.vm_id, pid, err.desc)

    async def _remove_files(self, agent: GuestAgent, files: list[_TailedFile]) -> None:
        for tailed in files:
            await agent.close_quietly("guest-file-close", {"handle": tailed.handle})
        await agent.close_quietly(
            "guest-exec", {"path": "rm", "arg": ["-f", *(t.path for t in files)]}
        )

    def _remember(self, job: _Job) -> None:
        jobs = self._jobs.setdefault(job.vm_id, OrderedDict())
        jobs[job.id] = job
        finished = [j.id for j in jobs.values() if j.done.is_set()]
        for old in finished[: max(0, len(jobs) - self._settings.exec_retained_per_vm)]:
            del jobs[old]

    def _job(self, vm_id: str, exec_id: str) -> _Job:
        self._get_vm(vm_id)
        jobs = self._jobs.get(vm_id)
        job = jobs.get(exec_id) if jobs is not None else None
        if job is None:
            raise ExecNotFound(f"no command {exec_id!r} in VM {vm_id}", exec_id=exec_id)
        return job

    def exec_status(self, vm_id: str, exec_id: str) -> ExecResult:
        """Raises: VmNotFound, ExecNotFound."""
        return self._job(vm_id, exec_id).result()

    def exec_list(self, vm_id: str) -> list[ExecResult]:
        self._get_vm(vm_id)
        return [job.result() for job in self._jobs.get(vm_id, {}).values()]

    async def exec_stream(
        self, vm_id: str, exec_id: str, *, idle_s: float = math.inf
    ) -> AsyncIterator[ExecOutput | ExecResult | None]:
        """The command's output from the start, as it arrives, then its result.

        Yields None after ``idle_s`` without news (for keep-alives).
        """
        job = self._job(vm_id, exec_id)
        sent = {"stdout": 0, "stderr": 0}
        decoders = {name: codecs.getincrementaldecoder("utf-8")() for name in sent}
        while True:
            changed = job.changed
            for name, output in (("stdout", job.stdout), ("stderr", job.stderr)):
                if len(output.data) > sent[name]:
                    piece = bytes(output.data[sent[name] :])
                    yield _piece(name, sent[name], piece, decoders[name])
                    sent[name] += len(piece)
            if job.done.is_set():
                yield job.result()
                return
            with trio.move_on_after(idle_s):
                await changed.wait()
            if not changed.is_set():
                yield None

    async def network_stats(self, vm_id: str) -> list[InterfaceStats]:
        """Counters of the guest's network interfaces (loopback left out).

        Raises: VmNotFound, InvalidState, GuestAgentUnavailable, GuestOperationFailed.
        """
        agent = await self.agent(vm_id)
        try:
            interfaces = await agent.call(
                "guest-network-get-interfaces",
                reply=list[NetworkInterface],
            )
        except AgentRefused as err:
            raise GuestOperationFailed(f"the guest agent refused: {err.desc}") from err
        return [
            InterfaceStats(name=nic.name, **nic.statistics.model_dump())
            for nic in interfaces
            if nic.name != "lo" and nic.statistics is not None
        ]

    # -- files -----------------------------------------------------------------------

    async def open_file(
        self, vm_id: str, request: FileReadRequest, *, wait_agent_s: float = 0
    ) -> GuestFileReader:
        """Open a guest file for reading in chunks.

        Raises:
            VmNotFound, InvalidState, GuestAgentUnavailable, GuestPathNotFound,
            GuestFileTooLarge, GuestOperationFailed.
        """
        agent = await self.agent(vm_id, wait_agent_s)
        handle = await self._open(agent, request.path, "r")
        try:
            end = await agent.call("guest-file-seek", _seek(handle, 0, "end"), reply=FilePosition)
            await agent.call("guest-file-seek", _seek(handle, 0, "set"), reply=FilePosition)
        except AgentRefused as err:
            await agent.close_quietly("guest-file-close", {"handle": handle})
            raise _refusal(err, request.path) from err
        size = end.position
        limit = self._settings.file_max_bytes
        if size > limit:
            await agent.close_quietly("guest-file-close", {"handle": handle})
            raise GuestFileTooLarge(
                f"the guest file has {size} bytes; the limit is {limit}", size=size, limit=limit
            )
        return GuestFileReader(agent, handle, size, self._settings.file_chunk_bytes, limit)

    async def read_file(
        self, vm_id: str, request: FileReadRequest, *, wait_agent_s: float = 0
    ) -> FileContent:
        """The whole file (for tools and scripts): text when valid UTF-8, else base64."""
        reader = await self.open_file(vm_id, request, wait_agent_s=wait_agent_s)
        data = b"".join([chunk async for chunk in reader.chunks()])
        text, b64 = _text_or_b64(data)
        return FileContent(path=request.path, size=len(data), text=text, content_b64=b64)

    async def write_file(
        self, vm_id: str, request: FileWriteRequest, *, wait_agent_s: float = 0
    ) -> FileWritten:
        data = (
            request.text.encode()
            if request.text is not None
            else base64.b64decode(request.content_b64 or "")
        )
        return await self.write_bytes(vm_id, request.path, data, wait_agent_s=wait_agent_s)

    async def write_bytes(
        self, vm_id: str, path: str, data: bytes, *, wait_agent_s: float = 0
    ) -> FileWritten:
        """Create or replace a guest file with ``data``, written in chunks.

        Raises:
            VmNotFound, InvalidState, GuestAgentUnavailable, GuestFileTooLarge,
            GuestPathNotFound (the folder does not exist), GuestOperationFailed.
        """
        FileReadRequest(path=path)  # validates the guest path
        if len(data) > self._settings.file_max_bytes:
            raise GuestFileTooLarge(
                f"the file has {len(data)} bytes; the limit is {self._settings.file_max_bytes}"
            )
        agent = await self.agent(vm_id, wait_agent_s)
        handle = await self._open(agent, path, "w")
        chunk = self._settings.file_chunk_bytes
        try:
            for start in range(0, len(data), chunk):
                piece = data[start : start + chunk]
                await agent.call(
                    "guest-file-write", {"handle": handle, "buf-b64": _b64(piece)}, reply=Done
                )
            await agent.call("guest-file-flush", {"handle": handle}, reply=Done)
        except AgentRefused as err:
            raise _refusal(err, path) from err
        finally:
            await agent.close_quietly("guest-file-close", {"handle": handle})
        return FileWritten(path=path, size=len(data))


def _piece(stream: str, offset: int, data: bytes, decoder: codecs.IncrementalDecoder) -> ExecOutput:
    """Text when the bytes continue valid UTF-8 (split characters are carried over)."""
    try:
        return ExecOutput(stream=stream, offset=offset, text=decoder.decode(data))  # type: ignore[arg-type]
    except UnicodeDecodeError:
        decoder.reset()
        return ExecOutput(stream=stream, offset=offset, b64=_b64(data))  # type: ignore[arg-type]
