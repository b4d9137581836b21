"""A node's watchdog (``hypermachine.watchdog``) as the tests see it: started for a
runtime dir, found in the process table, fed over its socket; and processes that
stand in for the QEMUs of a runtime dir (their command line is what the watchdog
matches: ``-uuid`` and a ``-pidfile`` in a VM's run dir there)."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil

from hypermachine.watchdog import SOCKET_NAME, command


def start(runtime_dir: Path) -> subprocess.CompletedProcess[bytes]:
    """Start a watchdog as the server does; returns once it listens (or refused)."""
    return subprocess.run(command(runtime_dir), capture_output=True, timeout=60, check=False)


def pids(runtime_dir: Path) -> list[int]:
    """The watchdogs of ``runtime_dir`` running now."""
    wanted = command(runtime_dir)[1:]
    return [
        proc.pid
        for proc in psutil.process_iter(["cmdline", "status"])
        if (proc.info["cmdline"] or [])[1:] == wanted
        and proc.info["status"] != psutil.STATUS_ZOMBIE
    ]


def feed(runtime_dir: Path, *lines: bytes) -> list[str]:
    """Send ``lines`` (each gets a newline) on one connection; the answers."""
    answers = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(runtime_dir / SOCKET_NAME))
        reader = sock.makefile("rb")
        for line in lines:
            sock.sendall(line + b"\n")
            answers.append(reader.readline().decode().strip())
    return answers


def stand_in(runtime_dir: Path, *, vm: str = "vm-standin") -> subprocess.Popen[bytes]:
    """A sleeping process whose command line is a QEMU's of a VM in ``runtime_dir``."""
    pidfile = runtime_dir / vm / "qemu.pid"
    argv = [sys.executable, "-c", "import time; time.sleep(600)",
            "-uuid", str(uuid.uuid4()), "-pidfile", str(pidfile)]  # fmt: skip
    return subprocess.Popen(argv)
