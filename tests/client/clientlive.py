"""What the client tests share: the live server's keys, running the CLI as a user would,
waiting for a console line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hypermachine.client import Client, VmHandle
from realserver import Server

FREE_TIER_LIMIT = 3  # requests per minute for the free-tier key
CLI = [sys.executable, "-m", "hypermachine.cli"]


@dataclass
class Live:
    server: Server
    key: str  # enterprise tier: no rate limit
    free_key: str  # free tier, FREE_TIER_LIMIT requests a minute

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, **options: object) -> Client:
        return Client(self.url, self.key, **options)  # type: ignore[arg-type]


def create_key(data_dir: Path, name: str, tier: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data_dir),
         "key", "create", "--name", name, "--tier", tier],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def wait_for_log(vm: VmHandle, text: str, timeout: float = 120) -> list[str]:
    """Poll the console log until ``text`` is in it (a log line has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = vm.logs(500)
        if any(text in line for line in lines):
            return lines
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not on {vm.name}'s console after {timeout} s: {lines[-20:]}")


def env(live: Live) -> dict[str, str]:
    return {**os.environ, "HM_SERVER": live.url, "HM_API_KEY": live.key}


def hm(live: Live, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``hypermachine ARGS…`` against the live server, its output captured."""
    return subprocess.run(
        [*CLI, *args], input=stdin, capture_output=True, text=True, env=env(live), timeout=300
    )


def ok(live: Live, *args: str, stdin: str | None = None) -> str:
    """``hypermachine ARGS…``, which must succeed: its stdout."""
    done = hm(live, *args, stdin=stdin)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout
