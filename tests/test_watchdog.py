"""The node's watchdog process, driven directly: its socket is the server's alone, one
guards a runtime dir, unarmed or fed garbage it kills nothing, and once its deadline
passes it kills the QEMUs of its own runtime dir (processes standing in for them:
their command lines match) and nothing else, then exits."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import watchdogs
from hypermachine.hypervisor.vmfiles.confine import DEFAULT_QEMU_USER, resolve_qemu_identity
from hypermachine.watchdog import ALREADY_GUARDED, LOG_NAME, MAX_AHEAD_S, SOCKET_NAME
from support import wait_until


@pytest.fixture
def runtime_dirs(tmp_path: Path) -> Iterator[list[Path]]:
    """Two runtime dirs (two nodes' on one host); their watchdogs are killed after."""
    dirs = [tmp_path / "rt-a", tmp_path / "rt-b"]
    for folder in dirs:
        folder.mkdir(mode=0o700)
    try:
        yield dirs
    finally:
        for folder in dirs:
            for pid in watchdogs.pids(folder):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stand_ins() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def _started(runtime_dir: Path) -> int:
    done = watchdogs.start(runtime_dir)
    assert done.returncode == 0, done.stderr
    (pid,) = watchdogs.pids(runtime_dir)
    return pid


def test_the_socket_is_the_servers_alone(runtime_dirs: list[Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("QEMU runs as its own user only under a root server")
    runtime_dir = runtime_dirs[0]
    _started(runtime_dir)
    path = runtime_dir / SOCKET_NAME
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    for name in ("watchdog.lock", LOG_NAME):
        assert stat.S_IMODE(os.lstat(runtime_dir / name).st_mode) == 0o600, name
    # QEMU's user may search the runtime dir (it must reach its VMs' sockets) ...
    identity = resolve_qemu_identity(DEFAULT_QEMU_USER, [runtime_dir])
    assert identity is not None

    def connect_as_qemu() -> subprocess.CompletedProcess[str]:
        probe = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
        return subprocess.run(
            ["/usr/bin/python3", "-c", probe, str(path)],  # one its user may run
            capture_output=True, text=True, timeout=30, check=False,
            **identity.popen_kwargs(),
        )  # fmt: skip

    # ... and the socket's mode is all that keeps it out: opened up, it connects.
    path.chmod(0o666)
    assert connect_as_qemu().returncode == 0
    path.chmod(0o600)
    refused = connect_as_qemu()
    assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused.stderr


def test_a_second_watchdog_for_the_same_runtime_dir_exits(runtime_dirs: list[Path]) -> None:
    runtime_dir = runtime_dirs[0]
    first = _started(runtime_dir)
    second = watchdogs.start(runtime_dir)
    assert second.returncode == ALREADY_GUARDED, second
    assert b"another watchdog guards" in second.stderr
    assert watchdogs.pids(runtime_dir) == [first]
    (answer,) = watchdogs.feed(runtime_dir, b"%.6f" % (time.monotonic() + 60))
    assert answer.startswith("armed "), answer
    assert watchdogs.pids(runtime_dir) == [first], "the first still guards"


async def test_garbage_neither_crashes_nor_arms_it_and_the_deadline_kills_only_its_qemus(
    runtime_dirs: list[Path], stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    fed, unfed = runtime_dirs
    ours, beside, unarmed_ones = (watchdogs.stand_in(d) for d in (fed, fed.parent, unfed))
    stand_ins.extend([ours, beside, unarmed_ones])
    # Not a QEMU, though its command line names a run dir in ``fed``.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                              str(fed / "vm-x" / "qemu.pid")])  # fmt: skip
    stand_ins.append(other)
    watchdog, idle = _started(fed), _started(unfed)

    now = time.monotonic()
    garbage = [b"", b"abc", b"nan", b"inf", b"-inf", b"1e400", b"1e3", b"-5", b"+5", b"1_000",
               b" 12.5", b"12.5 ", b"0x10", b"1.2.3", b"\xff\xfe", b"12\x005",
               b"%.3f" % (now + MAX_AHEAD_S + 5), b"9" * 40]  # fmt: skip
    for unfed_dir in (fed, unfed):
        answers = watchdogs.feed(unfed_dir, *garbage)
        assert all(a.startswith("refused") and a.endswith("(unarmed)") for a in answers), answers
    # A line without end: the connection is dropped, the watchdog goes on.
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(fed / SOCKET_NAME))
        try:
            for _ in range(1024):
                sock.sendall(b"7" * 1024)
            dropped = sock.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            dropped = True
    assert dropped
    assert watchdogs.pids(fed) == [watchdog] and watchdogs.pids(unfed) == [idle]

    deadline = time.monotonic() + 1.0
    (answer,) = watchdogs.feed(fed, b"%.6f" % deadline)
    assert answer.startswith("armed "), answer
    await wait_until(lambda: ours.poll() is not None, timeout=30, what="its QEMU killed")
    assert time.monotonic() >= deadline, "killed before its deadline"
    assert ours.returncode == -signal.SIGKILL
    await wait_until(lambda: not watchdogs.pids(fed), what="the watchdog to exit")
    # Another runtime dir's QEMU (fed nothing, or no runtime dir of a watchdog) and a
    # process that is no QEMU live on.
    assert [p.poll() for p in (beside, unarmed_ones, other)] == [None, None, None]
    assert watchdogs.pids(unfed) == [idle]
    (still,) = watchdogs.feed(unfed, b"x")
    assert still == "refused: not a number of seconds (unarmed)"
    log = (fed / LOG_NAME).read_text()
    assert f"killed QEMU pid {ours.pid}" in log and log.count("killed QEMU pid") == 1, log
    assert "killed" not in (unfed / LOG_NAME).read_text()
    assert not (fed / SOCKET_NAME).exists()


async def test_a_deadline_already_past_fences_at_once(
    runtime_dirs: list[Path], stand_ins: list[subprocess.Popen[bytes]]
) -> None:
    runtime_dir = runtime_dirs[0]
    qemus = [watchdogs.stand_in(runtime_dir, vm=f"vm-{n}") for n in range(2)]
    stand_ins.extend(qemus)
    _started(runtime_dir)
    (answer,) = watchdogs.feed(runtime_dir, b"%.6f" % (time.monotonic() + 60))
    assert answer.startswith("armed 59.") or answer.startswith("armed 60."), answer
    watchdogs.feed(runtime_dir, b"%.6f" % (time.monotonic() - 5))  # replaces the later one
    await wait_until(
        lambda: all(q.poll() is not None for q in qemus), timeout=10, what="both killed"
    )
    await wait_until(lambda: not watchdogs.pids(runtime_dir), what="the watchdog to exit")
