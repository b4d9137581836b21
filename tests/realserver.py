"""``hypermachine serve`` as a real process on a free port, as a user would run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``hypermachine serve`` as a real process, as a user would run it."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra_env: tuple[str, str], args: Sequence[str] = ()) -> None:
        """Start it (``args``: more ``serve`` flags) and wait until it answers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HM_")}
        env.update(extra_env)
        log = self.data_dir / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(self.data_dir),
                 "serve", "--port", str(self.port), *args],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        # No event tells us the port is open: poll /health under a deadline.
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=self.url) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    assert self.proc.poll() is None, log.read_text()
                    time.sleep(0.05)
        raise AssertionError(f"server did not come up: {log.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
