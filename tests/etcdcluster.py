"""A real 3-member etcd cluster on loopback for the cluster tests (Debian's etcd-server).

Each member has its own client and peer port and data dir; :meth:`EtcdCluster.start`
returns once every member reports itself healthy. Members can be stopped and started
again (a node cut off from etcd, a lost quorum).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from realserver import free_port

__all__ = ["EtcdCluster", "etcd_available"]

_HEALTHY_WITHIN_S = 60.0


def etcd_available() -> bool:
    return shutil.which("etcd") is not None


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    root: Path
    size: int = 3
    token: str = field(default_factory=lambda: f"hm-test-{uuid.uuid4().hex[:8]}")
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        for n in range(1, self.size + 1):
            data = self.root / f"e{n}"
            self.members.append(
                Member(f"e{n}", free_port(), free_port(), data, self.root / f"e{n}.log")
            )

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    @property
    def endpoints(self) -> str:
        """The client URLs as ``--etcd`` takes them."""
        return ",".join(self.client_urls)

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix`` (what one test module left for the next)."""
        end = bytearray(prefix.encode())
        end[-1] += 1
        body = {"key": base64.b64encode(prefix.encode()).decode(),
                "range_end": base64.b64encode(bytes(end)).decode()}  # fmt: skip
        answer = httpx.post(f"{self.client_urls[0]}/v3/kv/deleterange", json=body, timeout=10)
        answer.raise_for_status()

    def _argv(self, member: Member, state: str) -> list[str]:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        return [
            "etcd", "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", initial, "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", "100", "--election-timeout", "1000",
        ]  # fmt: skip

    def start(self) -> None:
        for member in self.members:
            self.start_member(member, wait=False)
        for member in self.members:
            self.wait_healthy(member)

    def start_member(self, member: Member, *, wait: bool = True) -> None:
        state = "existing" if (member.data_dir / "member").exists() else "new"
        with open(member.log, "ab") as out:
            member.proc = subprocess.Popen(
                self._argv(member, state), stdout=out, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_healthy(member)

    def stop_member(self, member: Member) -> None:
        if member.proc is not None and member.proc.poll() is None:
            member.proc.terminate()
            try:
                member.proc.wait(10)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()
        member.proc = None

    def wait_healthy(self, member: Member) -> None:
        """Block until ``member`` answers ``/health`` with true (it sees a leader)."""
        deadline = time.monotonic() + _HEALTHY_WITHIN_S
        last = ""
        while time.monotonic() < deadline:
            if member.proc is not None and member.proc.poll() is not None:
                raise RuntimeError(f"etcd {member.name} exited: {member.log.read_text()[-800:]}")
            try:
                answer = httpx.get(f"{member.client_url}/health", timeout=2)
                if answer.status_code == 200 and answer.json().get("health") == "true":
                    return
                last = answer.text
            except httpx.HTTPError as err:
                last = repr(err)
            time.sleep(0.1)
        raise RuntimeError(f"etcd {member.name} not healthy within {_HEALTHY_WITHIN_S} s: {last}")

    def stop(self) -> None:
        for member in self.members:
            self.stop_member(member)
