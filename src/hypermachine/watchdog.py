"""A cluster node's watchdog: kills the node's QEMUs once its server's fencing deadline
has passed with no newer one (docs/cluster.md, "The watchdog").

A node's QEMUs outlive its server (a restarted server re-adopts them), but must not
outlive its etcd lease: once the lease ends, another node may boot the same VM from
the same disk. A server that is killed or hangs cannot fence them itself, so the
server (``cluster.feeder``) starts this small process, detached in its own session,
and feeds it after every renewal the moment by which it would fence itself. When
that moment passes with no newer one, the watchdog SIGKILLs every QEMU of this node,
logs what it killed and exits. It has no network access and does nothing else.

Run as ``python -m hypermachine.watchdog RUNTIME_DIR`` (the node's runtime dir, which
holds each VM's run dir; the server runs :func:`command`). One per runtime dir: it
holds ``watchdog.lock`` (``flock``) and a second one exits with
:data:`ALREADY_GUARDED`. The starting process returns once the socket listens (the
watchdog itself lives on in a child), so its exit status tells the server whether
to connect.

Protocol, on the unix socket ``RUNTIME_DIR/watchdog.sock`` (mode 0600: the server's
user alone may connect; QEMU's user may search the folder but not feed it): each
line is a deadline, in seconds on the system's monotonic clock (``CLOCK_MONOTONIC``,
Python's ``time.monotonic()``), and replaces the one before; the reply is one line,
``armed <seconds left>`` or ``refused: <why> (<armed or not>)``. A deadline already
past fences at once (the server's own rule would have fenced by then); anything else
than plain digits with an optional fraction, at most :data:`MAX_AHEAD_S` ahead, is
refused and changes nothing. A connection closing changes nothing either: a dead
server's deadline stands. Until the first deadline the watchdog is unarmed and kills
nothing.

The QEMUs of this node are those whose command line ``build_argv`` made with the VM's
run dir in this runtime dir (:func:`~hypermachine.hypervisor.qemu.argv.launched_in`),
never a pidfile's word alone (a pidfile is written by QEMU itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import selectors
import signal
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .hypervisor.qemu.argv import launched_in

__all__ = [
    "ALREADY_GUARDED",
    "LOCK_NAME",
    "LOG_NAME",
    "MAX_AHEAD_S",
    "SOCKET_NAME",
    "command",
    "main",
    "node_qemus",
    "parse_deadline",
]

SOCKET_NAME = "watchdog.sock"
LOCK_NAME = "watchdog.lock"
LOG_NAME = "watchdog.log"
ALREADY_GUARDED = 3  # exit status: another watchdog holds this runtime dir
MAX_AHEAD_S = 600.0  # two thirds of the longest lease (300 s), with room
MAX_LINE = 64  # bytes; a longer line drops its connection
MAX_CONNECTIONS = 8
_DEADLINE = re.compile(rb"[0-9]{1,12}(\.[0-9]{1,9})?")
_SWEEPS = 3  # a QEMU started while the first sweep ran is caught by the next

_START = "import sys; from hypermachine.watchdog import main; sys.exit(main(sys.argv[1:]))"

log = logging.getLogger("hypermachine.watchdog")


def command(runtime_dir: Path) -> list[str]:
    """The command line starting a watchdog for ``runtime_dir`` with this interpreter."""
    return [sys.executable, "-c", _START, str(runtime_dir)]


def parse_deadline(line: bytes, now: float) -> float:
    """The deadline a line of the protocol gives (seconds, monotonic clock): digits,
    optionally a point and more digits, nothing else (no sign, exponent, ``nan``).

    Raises:
        ValueError: not such a number, or more than :data:`MAX_AHEAD_S` ahead of ``now``.
    """
    if not _DEADLINE.fullmatch(line):
        raise ValueError("not a number of seconds")
    deadline = float(line)
    if deadline - now > MAX_AHEAD_S:
        raise ValueError(f"more than {MAX_AHEAD_S:.0f} s ahead")
    return deadline


def node_qemus(runtime_dir: Path) -> list[psutil.Process]:
    """Every running QEMU of the server whose runtime dir is ``runtime_dir``."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if launched_in(cmdline, str(runtime_dir)):
            found.append(proc)
    return found


def _fence(runtime_dir: Path) -> int:
    """SIGKILL every QEMU of this node; how many were killed."""
    killed: list[psutil.Process] = []
    for _ in range(_SWEEPS):
        found = [proc for proc in node_qemus(runtime_dir) if proc not in killed]
        if not found:
            break
        for proc in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()  # psutil checks it is still the process it listed
                killed.append(proc)
                log.error("killed QEMU pid %d: %s", proc.pid, " ".join(proc.info["cmdline"][:5]))
    give_up = time.monotonic() + 5
    while (alive := [proc for proc in killed if _alive(proc)]) and time.monotonic() < give_up:
        time.sleep(0.05)
    for proc in alive:
        log.error("QEMU pid %d is still there after SIGKILL", proc.pid)
    return len(killed)


def _alive(proc: psutil.Process) -> bool:
    """Still running: a zombie (its parent, the server, may be stopped) holds no files."""
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@dataclass
class _Connection:
    sock: socket.socket
    pending: bytes = b""


@dataclass
class _Watchdog:
    runtime_dir: Path
    listener: socket.socket
    deadline: float | None = None
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)

    def run(self) -> None:
        """Serve feeds until the deadline passes, then fence."""
        late = self._until_deadline()
        log.error("fencing: the server's deadline passed %.3f s ago with no newer one", late)
        killed = _fence(self.runtime_dir)
        log.error("fenced %d QEMU(s); the watchdog exits", killed)

    def _until_deadline(self) -> float:
        """Take feeds until the deadline has passed; by how much it has."""
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        while True:
            timeout = None if self.deadline is None else max(0.0, self.deadline - time.monotonic())
            ready = self.selector.select(timeout)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return time.monotonic() - self.deadline
            for key, _ in ready:
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._read(key.data)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        if len(self.selector.get_map()) > MAX_CONNECTIONS:
            sock.close()
            return
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, _Connection(sock))

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.pending += data
        while b"\n" in conn.pending:
            line, conn.pending = conn.pending.split(b"\n", 1)
            if not self._reply(conn, self._take(line)):
                return
        if len(conn.pending) > MAX_LINE:
            log.warning("dropped a connection: a line longer than %d bytes", MAX_LINE)
            self._close(conn)

    def _take(self, line: bytes) -> bytes:
        now = time.monotonic()
        try:
            deadline = parse_deadline(line, now)
        except ValueError as err:
            log.warning("refused a deadline: %s", err)
            return f"refused: {err} ({self._state(now)})\n".encode()
        if self.deadline is None:
            log.info("armed: fencing in %.3f s unless fed again", deadline - now)
        self.deadline = deadline
        return f"armed {deadline - now:.3f}\n".encode()

    def _state(self, now: float) -> str:
        if self.deadline is None:
            return "unarmed"
        return f"armed, {self.deadline - now:.3f} s left"

    def _reply(self, conn: _Connection, answer: bytes) -> bool:
        try:
            conn.sock.send(answer)
        except OSError:  # a peer that does not read its answers
            self._close(conn)
            return False
        return True

    def _close(self, conn: _Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()


def _open_private(path: Path, flags: int) -> int:
    return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _check_runtime_dir(path: Path) -> None:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SystemExit(f"{path} is not a directory of this user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SystemExit(f"{path} is writable by others")


def _listen(path: Path) -> socket.socket:
    """A listening socket at ``path``, mode 0600 from its creation on."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead watchdog's: the lock is ours
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    os.chmod(path, 0o600)
    listener.listen(MAX_CONNECTIONS)
    return listener


def _detach() -> None:
    """Go on in a child of its own session; the starting process exits 0."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hypermachine.watchdog RUNTIME_DIR", file=sys.stderr)
        return 2
    runtime_dir = Path(argv[0])
    _check_runtime_dir(runtime_dir)
    lock = _open_private(runtime_dir / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another watchdog guards {runtime_dir}", file=sys.stderr)
        return ALREADY_GUARDED
    listener = _listen(runtime_dir / SOCKET_NAME)
    logfile = os.fdopen(_open_private(runtime_dir / LOG_NAME, os.O_WRONLY | os.O_APPEND), "a")
    handler = logging.StreamHandler(logfile)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # a terminal's signals; SIGTERM still ends it
    _detach()
    log.info("guarding %s", runtime_dir)
    try:
        _Watchdog(runtime_dir, listener).run()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(runtime_dir / SOCKET_NAME)  # before the lock goes with this process
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
