"""A NAT VM's network: one ``passt`` per VM, supervised like its swtpm.

Why passt and not QEMU's user networking (libslirp): slirp maps the gateway
10.0.2.2 to the host's loopback, so every guest reached every loopback service
(the API included), and its only switch, ``restrict=on``, cuts the guest off from
everything. passt is a separate process translating the guest's frames into
ordinary sockets; with ``--no-map-gw`` the gateway is not the host, and since its
sockets belong to the unprivileged QEMU user the host's nftables rule
(:mod:`.firewall`) refuses every connection of that user to a local address. The
guest keeps the outside world and its port forwards (bound by passt on the
configured forward address).

Life of a VM's passt:

* **start** (beside QEMU) — the VM's resources make a connected socket pair; QEMU
  gets one end for its ``-netdev stream`` and :meth:`PasstProcesses.serve`, while
  QEMU starts, runs ``passt --foreground --fd N`` on the other (as the QEMU user when
  the server is root) and waits until passt reports its pid through a pipe
  (``--pid``), which it does once its forwards are bound; the guest runs only then.
  Frames QEMU sends before wait in the socket. No socket path, so nothing to poll for
  and nothing to plant.
* **stop** — with ``--fd`` passt exits once QEMU closes its end; :meth:`stop`
  (called once QEMU has exited) ends one still there and reaps it.
* **restart of the server** — passt, like QEMU, outlives it: :func:`find` re-finds it
  from ``passt.pid`` (its pid and start time, checked against the process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import trio

from ...errors import HypervisorError
from ...models import ForwardInfo, NetworkInfo
from ..vmfiles import nofollow
from ..vmfiles.confine import QemuIdentity
from ..vmfiles.layout import VmPaths

__all__ = ["PasstPaths", "PasstProcesses", "argv", "find"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PasstPaths:
    pidfile: Path  # run dir: "PID START_TIME", written by the server
    log: Path  # with the VM, so it outlives a stop

    @classmethod
    def for_vm(cls, paths: VmPaths) -> PasstPaths:
        return cls(pidfile=paths.run_dir / "passt.pid", log=paths.vm_dir / "passt.log")


def _ports(forwards: Iterable[ForwardInfo], protocol: str) -> list[str]:
    """passt's ``ADDRESS/HOST:GUEST`` specs, or ``none`` (passt otherwise mirrors TCP
    forwards to UDP)."""
    specs = [
        f"{f.host_address}/{int(f.host_port)}:{int(f.guest_port)}"
        for f in forwards
        if f.protocol == protocol
    ]
    return specs or ["none"]


def argv(binary: str, info: NetworkInfo, guest_fd: int, ready_fd: int) -> list[str]:
    """passt's command line for the guest ``info`` describes (pure).

    The guest keeps QEMU's user-network addresses (``info.ip``, gateway, DNS, all set
    by the server), IPv4 only; DNS to ``info.dns[0]`` goes to the host's resolver.
    """
    if info.ip is None or info.gateway is None:
        raise ValueError("a nat VM's network has no address planned")
    address, prefix = info.ip.split("/")
    args = [
        binary, "--foreground", "--quiet", "--ipv4-only", "--no-map-gw",
        "--fd", str(int(guest_fd)), "--pid", f"/dev/fd/{int(ready_fd)}",
        "--address", address, "--netmask", prefix, "--gateway", info.gateway,
    ]  # fmt: skip
    for dns in info.dns[:1]:
        args += ["--dns-forward", dns]
    for spec in _ports(info.forwards, "tcp"):
        args += ["--tcp-ports", spec]
    for spec in _ports(info.forwards, "udp"):
        args += ["--udp-ports", spec]
    return args


def _record(pidfile: Path, pid: int) -> None:
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error as err:
        raise HypervisorError("passt ended as soon as it was ready") from err
    nofollow.write_file(pidfile, f"{pid} {started!r}\n".encode())


def find(paths: PasstPaths) -> int | None:
    """The pid of this VM's running passt: the recorded pid with the recorded start time."""
    try:
        pid_text, started_text = nofollow.read_file(paths.pidfile, limit=64).decode().split()
        process = psutil.Process(int(pid_text))
        alive = process.status() != psutil.STATUS_ZOMBIE
        same = abs(process.create_time() - float(started_text)) < 0.01
        named = process.name().startswith("passt")
    except (OSError, ValueError, psutil.Error):
        return None
    return process.pid if alive and same and named else None


class PasstProcesses:
    """Starts, finds and stops the passt of each NAT VM (its children are reaped here)."""

    def __init__(self, binary: str, timeout_s: float, identity: QemuIdentity | None = None) -> None:
        self._binary = binary
        self._timeout_s = timeout_s
        self._identity = identity
        self._children: dict[Path, subprocess.Popen[bytes]] = {}

    async def serve(self, info: NetworkInfo, vm_paths: VmPaths, guest_end: socket.socket) -> None:
        """Start the VM's passt on ``guest_end``, the other end of QEMU's socket (closed
        here on every path: passt holds its own copy). A migration's destination QEMU
        gets its socket first; its passt starts once the source's has let go of the
        forwarded ports.

        Raises:
            HypervisorError: passt could not start or bind a forward within the budget.
        """
        paths = PasstPaths.for_vm(vm_paths)
        with guest_end:
            await self.stop(vm_paths)  # a stale one would hold the forwarded ports
            vm_paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            child, ready_r = self._spawn(info, paths, guest_end)
        self._children[paths.pidfile] = child
        try:
            await self._wait_ready(ready_r, child, paths)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.stop(vm_paths)
            raise
        log.info("passt pid %d serves %s", child.pid, vm_paths.run_dir.name)

    def _spawn(
        self, info: NetworkInfo, paths: PasstPaths, guest_end: socket.socket
    ) -> tuple[subprocess.Popen[bytes], int]:
        """passt started on ``guest_end``; the read end of the pipe it reports ready on."""
        ready_r, ready_w = os.pipe()
        try:
            if self._identity is not None:  # passt opens /dev/fd/N as its own user
                os.fchown(ready_w, self._identity.uid, self._identity.gid)
            command = argv(self._binary, info, guest_end.fileno(), ready_w)
            with open(paths.log, "ab") as out:
                child = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(guest_end.fileno(), ready_w),
                    start_new_session=True,
                    close_fds=True,
                    **(self._identity.popen_kwargs() if self._identity is not None else {}),
                )
        except OSError as err:
            os.close(ready_r)
            raise HypervisorError(f"cannot start passt: {err.strerror}") from err
        finally:
            os.close(ready_w)
        return child, ready_r

    async def _wait_ready(
        self, ready_r: int, child: subprocess.Popen[bytes], paths: PasstPaths
    ) -> None:
        """passt writes its pid once set up; end of file instead means it gave up."""
        async with trio.lowlevel.FdStream(ready_r) as ready:
            try:
                with trio.fail_after(self._timeout_s):
                    said = await ready.receive_some(64)
            except trio.TooSlowError as err:
                raise HypervisorError(f"passt was not ready within {self._timeout_s:g} s") from err
        if said.strip() != str(child.pid).encode():
            raise HypervisorError("passt could not start", log=_tail(paths.log))
        _record(paths.pidfile, child.pid)

    async def stop(self, vm_paths: VmPaths) -> None:
        """End the VM's passt if it is still running (it normally exits with QEMU)."""
        paths = PasstPaths.for_vm(vm_paths)
        pid = find(paths)
        if pid is not None:
            log.info("stopping passt pid %d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        child = self._children.pop(paths.pidfile, None)
        if child is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_reap, child, self._timeout_s)
        with contextlib.suppress(FileNotFoundError):
            paths.pidfile.unlink()


def _reap(child: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _tail(path: Path, limit: int = 400) -> str:
    try:
        return nofollow.read_file(path, limit).decode(errors="replace").strip()
    except OSError:
        return ""
