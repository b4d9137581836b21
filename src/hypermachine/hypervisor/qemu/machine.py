"""One live QEMU process: launching it, supervising it, and acting on it over QMP.

A :class:`Machine` exists while a QEMU process does. Its :meth:`supervise` task
(owned by the manager's nursery) turns QMP events and the process's exit into
state reports through a callback; cancelling it only detaches — QEMU keeps
running and a restarted server re-adopts it, as libvirt does.

Each task of the supervision runs contained (faults.py): a failure of the QMP
session or of a stop task ends this QEMU and makes the VM ``error`` with the
reason (:meth:`Machine.fail`); a failing companion calls its own fault handler.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import trio

from ...errors import HypervisorError
from ...models import VmState
from ..vmfiles import nofollow
from ..vmfiles.confine import QemuIdentity
from ..vmfiles.layout import VmPaths
from . import qmp_commands
from .argv import launched_for
from .faults import FaultHandler, contained
from .qmp import QmpBridge, QmpGone, QmpSession

__all__ = [
    "ArgvBuilder",
    "Companion",
    "ExitReport",
    "Machine",
    "adopt_pid",
    "qmp_event",
    "spawn_qemu",
]

log = logging.getLogger(__name__)

# After a failed boot, how long QEMU gets to exit by itself (its status and log
# then say why) before it is killed.
_EXIT_EXPLAINS_S = 1.0
# After QEMU exits, how long its last QMP events may take to arrive.
_EVENT_DRAIN_S = 2.0

# (state, reason) reported to the manager; it stores and announces them.
StateReport = Callable[[VmState, str | None], Awaitable[None]]

_SHUTDOWN_REASONS = {
    "guest-shutdown": "the guest powered itself off",
    "host-qmp-quit": "stopped on request",
    "host-signal": "QEMU was terminated by a signal",
    "guest-panic": "the guest kernel panicked",
}


@dataclass(frozen=True)
class Companion:
    """A task that lives exactly as long as a VM's supervision (guest agent, log rotation).

    ``on_fault`` marks what it serves as broken when the task fails; the VM runs on.
    """

    name: str
    run: Callable[[], Awaitable[None]]
    on_fault: FaultHandler


def qmp_event(message: dict[str, object]) -> tuple[str, dict[str, object]]:
    """An event's name and data, whatever odd fields it carries (never raises)."""
    name, data = message.get("event"), message.get("data")
    return (name if isinstance(name, str) else "", data if isinstance(data, dict) else {})


@dataclass
class ExitReport:
    """What we learned before QEMU exited, to explain the exit."""

    shutdown_reason: str | None = None
    panic: dict[str, object] | None = None
    returncode: int | None = None
    log_tail: str = ""
    stop_requested: str | None = None  # set when the server itself is stopping the VM
    failure: str | None = None  # set when the server gave up on a QEMU and killed it
    keep_state: bool = False  # the server drives the VM's state across this exit (restore)
    handed_over: bool = False  # the VM lives on in another QEMU (a live migration's source)

    def outcome(self) -> tuple[VmState, str]:
        if self.failure is not None:
            return VmState.ERROR, self.failure
        if self.panic is not None or self.shutdown_reason == "guest-panic":
            return VmState.ERROR, "the guest kernel panicked"
        if self.stop_requested is not None:
            return VmState.STOPPED, self.stop_requested
        if self.shutdown_reason is not None:
            return VmState.STOPPED, _SHUTDOWN_REASONS.get(
                self.shutdown_reason, f"shut down ({self.shutdown_reason})"
            )
        how = (
            f"killed by signal {-self.returncode}"
            if self.returncode is not None and self.returncode < 0
            else f"exit status {self.returncode}"
            if self.returncode is not None
            else "no exit status (not our child)"
        )
        tail = f": {self.log_tail}" if self.log_tail else ""
        return VmState.ERROR, f"QEMU exited unexpectedly ({how}){tail}"


def _listening_socket(path: Path) -> socket.socket:
    """A socket listening at ``path``, mode 0600: only the server connects (QEMU is
    handed the listening fd). The run dir belongs to the QEMU user, so the socket is
    bound and its mode set in the runtime dir (the server's), then renamed into place:
    a ``chmod`` by path could follow a symlink swapped in after the bind."""
    staged = path.parent.with_name(f".{path.parent.name}.q")  # no longer than `path`
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(staged))
        staged.chmod(0o600)
        staged.replace(path)
        sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return sock


ArgvBuilder = Callable[[int, int | None], list[str]]  # (QMP fd, tap fd) -> QEMU's argv


def spawn_qemu(
    build_argv: ArgvBuilder,
    paths: VmPaths,
    identity: QemuIdentity | None = None,
    tap_fd: int | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start QEMU detached (own session) with a ready QMP listening socket.

    ``build_argv`` receives the QMP socket's fd number and ``tap_fd``, the VM's tap
    opened by the server (so QEMU needs no access to ``/dev/net/tun``; closed here once
    QEMU holds its copy), or None; ``pass_fds``
    are further descriptors QEMU inherits (a NAT VM's passt socket). QEMU's output goes to
    ``paths.qemu_log``. With ``identity`` QEMU runs as that user, owning the VM's
    folders; the QMP socket stays the server's (mode 0600 in a 0700 folder).

    Raises:
        HypervisorError: the binary could not be executed.
    """
    try:
        paths.make()
        if identity is not None:
            identity.own(paths.vm_dir, paths.run_dir)
        qmp = _listening_socket(paths.qmp_socket)
    except BaseException:
        if tap_fd is not None:
            os.close(tap_fd)
        raise
    try:
        argv = build_argv(qmp.fileno(), tap_fd)
        with (
            nofollow.Folder(paths.vm_dir) as folder,
            folder.open(paths.qemu_log.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT) as out,
        ):
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(qmp.fileno(), *pass_fds, *(() if tap_fd is None else (tap_fd,))),
                start_new_session=True,
                close_fds=True,
                **(identity.popen_kwargs() if identity is not None else {}),
            )
    except OSError as err:  # the binary, or a qemu.log that is not a regular file
        raise HypervisorError(
            f"cannot start QEMU: {err.strerror}", argv0=str(err.filename)
        ) from err
    finally:
        qmp.close()  # QEMU holds its own copies of the listening socket and the tap
        if tap_fd is not None:
            os.close(tap_fd)


def adopt_pid(paths: VmPaths, vm_uuid: str) -> int | None:
    """The pid of this VM's QEMU if it is still running, checked by UUID on its command line."""
    try:
        pid = int(nofollow.read_file(paths.pidfile, limit=32).strip())
        cmdline = psutil.Process(pid).cmdline()
    except (OSError, ValueError, psutil.Error):
        return None
    return pid if launched_for(cmdline, vm_uuid) else None


def _log_tail(path: Path, limit: int = 400) -> str:
    try:
        text = nofollow.read_file(path, limit).decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[-limit:]


@dataclass
class Machine:
    """A running QEMU and the means to talk to it."""

    vm_id: str
    pid: int
    paths: VmPaths
    child: subprocess.Popen[bytes] | None = None  # None for a re-adopted process
    session: QmpSession | None = None
    exited: trio.Event = field(default_factory=trio.Event)
    finished: trio.Event = field(default_factory=trio.Event)  # the exit has been handled
    report: ExitReport = field(default_factory=ExitReport)
    companions: list[Companion] = field(default_factory=list)
    on_qmp: Callable[[str, float], None] | None = None  # (command, seconds) for metrics
    on_fault: Callable[[str, str], None] | None = None  # (part, reason), for the event log
    on_reset: Callable[[], None] | None = None  # the guest was reset (QMP RESET)
    _nursery: trio.Nursery | None = None
    _process: psutil.Process | None = None
    _events_done: trio.Event = field(default_factory=trio.Event)
    _gone: trio.Event = field(default_factory=trio.Event)  # the process has exited

    async def connect(self, bridge: QmpBridge, timeout_s: float) -> QmpSession:
        """Open QMP (QEMU may still be starting).

        Raises:
            HypervisorError: no QMP answer within ``timeout_s`` or QEMU died first.
        """
        try:
            with trio.fail_after(timeout_s):
                self.session = await bridge.connect(self.paths.qmp_socket, name=self.vm_id)
        except (trio.TooSlowError, QmpGone) as err:
            raise HypervisorError(
                "QEMU did not answer on QMP", reason=str(err), log=self.log_tail()
            ) from err
        with contextlib.suppress(psutil.Error):
            self._process = psutil.Process(self.pid)
            self._process.cpu_percent(None)  # prime: the next call measures from here
        return self.session

    def log_tail(self) -> str:
        """The last lines QEMU wrote to its log (why it ended, when it did)."""
        return _log_tail(self.paths.qemu_log)

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        if self.session is None:
            raise HypervisorError("QMP is not connected", vm_id=self.vm_id)
        started = trio.current_time()
        try:
            return await self.session.execute(command, arguments)
        except QmpGone as err:
            raise HypervisorError(f"QEMU went away during {command}", vm_id=self.vm_id) from err
        finally:
            if self.on_qmp is not None:
                self.on_qmp(command, trio.current_time() - started)

    async def execute_with_fd(self, command: str, arguments: dict[str, object], fd: int) -> None:
        """Run ``command`` with a copy of ``fd`` passed alongside it.

        Raises:
            HypervisorError: QMP is not connected, QEMU refused it or went away.
        """
        if self.session is None:
            raise HypervisorError("QMP is not connected", vm_id=self.vm_id)
        try:
            await self.session.execute_with_fd(command, arguments, fd)
        except QmpGone as err:
            raise HypervisorError("QEMU went away while taking a descriptor") from err

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    async def discard(self) -> None:
        """Kill a QEMU nobody supervises (a migration's destination that is not
        wanted), close its QMP session and reap it."""
        self.kill()
        if self.session is not None:
            await self.session.close()
        if self.child is not None:
            await trio.to_thread.run_sync(self.child.wait)

    @property
    def process(self) -> psutil.Process | None:
        return self._process

    async def terminate(self, grace_s: float) -> None:
        """``quit`` over QMP, SIGKILL after ``grace_s``; returns once QEMU is gone."""
        with trio.move_on_after(grace_s):
            with contextlib.suppress(HypervisorError):
                await qmp_commands.quit_qemu(self)
            await self.exited.wait()
            return
        self.kill()
        await self.exited.wait()

    def start_soon(self, part: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` as a task of this machine's supervisor (it ends with the VM); if it
        fails, the VM fails (:meth:`fail`)."""
        if self._nursery is None:
            raise HypervisorError("the VM is not being supervised", vm_id=self.vm_id)
        self._nursery.start_soon(self._contained, part, fn, self.fail)

    def fail(self, reason: str) -> None:
        """Give up on this QEMU: kill it; its exit is reported as ``error`` with ``reason``."""
        if self.report.failure is None:
            self.report.failure = reason
        self.kill()

    async def _contained(
        self, part: str, fn: Callable[[], Awaitable[None]], on_fault: FaultHandler
    ) -> None:
        def handle(reason: str) -> Awaitable[None] | None:
            if self.on_fault is not None:
                self.on_fault(part, reason)
            return on_fault(reason)

        await contained(self.vm_id, part, fn, handle)

    async def supervise(
        self,
        on_state: StateReport,
        *,
        boot: Callable[[], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow QEMU until it exits, then report the outcome.

        ``boot`` (for a freshly launched QEMU) runs first inside supervision —
        connect QMP and let the guest run — so a QEMU that dies or hangs while
        booting is reaped and explained like any other exit. Cancellation
        detaches: QMP closes and QEMU keeps running.
        """
        pidfd = os.pidfd_open(self.pid)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                session = functools.partial(self._session, on_state, boot)
                nursery.start_soon(self._contained, "the QMP session", session, self.fail)
                for companion in self.companions:
                    nursery.start_soon(
                        self._contained, companion.name, companion.run, companion.on_fault
                    )
                task_status.started()
                await trio.lowlevel.wait_readable(pidfd)
                self._gone.set()
                # QEMU is gone; let the events it sent before exiting (SHUTDOWN,
                # GUEST_PANICKED) arrive — the channel ends with the connection.
                with trio.move_on_after(_EVENT_DRAIN_S):
                    await self._events_done.wait()
                nursery.cancel_scope.cancel()
            self._reap()
            self.exited.set()
            state, reason = self.report.outcome()
            await on_state(state, reason)
        finally:
            self._nursery = None
            os.close(pidfd)
            if self.session is not None:
                await self.session.close()
            self.finished.set()

    async def _session(
        self, on_state: StateReport, boot: Callable[[], Awaitable[None]] | None
    ) -> None:
        try:
            if boot is not None:
                try:
                    await boot()
                except HypervisorError as err:
                    await self._abort_boot(err)
                    return
            await self._follow_events(on_state)
        finally:
            self._events_done.set()

    async def _abort_boot(self, err: HypervisorError) -> None:
        """Boot failed: if QEMU is exiting by itself its exit explains why; else kill it."""
        with trio.move_on_after(_EXIT_EXPLAINS_S):
            await self._gone.wait()
            return
        detail = err.details.get("reason") or ""
        self.report.failure = f"{err.message} {detail}".strip()
        self.kill()

    def _reap(self) -> None:
        if self.child is not None:
            self.report.returncode = self.child.wait()
        self.report.log_tail = self.log_tail()

    async def _follow_events(self, on_state: StateReport) -> None:
        if self.session is None:
            return
        async for event in self.session.events:
            name, data = qmp_event(event)
            log.debug("%s: QMP event %s %s", self.vm_id, name, data)
            if name == "SHUTDOWN":
                self.report.shutdown_reason = str(data.get("reason"))
            elif name == "GUEST_PANICKED":
                self.report.panic = dict(data)
                log.warning("%s: guest panicked: %s", self.vm_id, data)
            elif name == "STOP" and self.report.shutdown_reason is None:
                await self._report_run_state(on_state)
            elif name == "RESUME":
                await on_state(VmState.RUNNING, None)
            elif name == "RESET" and self.on_reset is not None:
                self.on_reset()

    async def _report_run_state(self, on_state: StateReport) -> None:
        try:
            run_state = await qmp_commands.query_status(self)
        except HypervisorError:
            return  # QEMU is exiting; the exit report explains it
        if run_state.status == "paused":
            await on_state(VmState.PAUSED, None)
