"""Scratch networks for tests: a uniquely named bridge, optionally a peer in a netns.

The bridge lives in the root namespace (QEMU opens its tap there) and carries no
address; the "host side" is a veth whose far end sits in a network namespace of
the test's own, holding the gateway address. Traffic therefore only ever goes to
the test's own namespace. Everything is deleted on exit, even after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@dataclass
class ScratchBridge:
    name: str
    subnet: ipaddress.IPv4Network
    netns: str | None = None
    _cleanups: list[list[str]] = field(default_factory=list)

    def host(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    def config(self) -> dict[str, str]:
        return {"subnet": str(self.subnet), "gateway": self.host(1)}

    def delete(self) -> None:
        ip("link", "del", "dev", self.name, check=False)

    def ping(self, address: str) -> bool:
        """One ping from the peer namespace (busybox's: iputils is not a dependency)."""
        return self.in_netns("busybox", "ping", "-c1", "-W1", address).returncode == 0

    def in_netns(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        assert self.netns is not None
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )


@contextlib.contextmanager
def scratch_bridge(*, peer: bool = False) -> Iterator[ScratchBridge]:
    """A bridge ``hmtest<hex>`` on 198.18.N.0/24 (benchmarking range, RFC 2544)."""
    tag = secrets.token_hex(3)
    subnet = ipaddress.IPv4Network(f"198.18.{secrets.randbelow(256)}.0/24")
    bridge = ScratchBridge(name=f"hmtest{tag}", subnet=subnet)
    try:
        ip("link", "add", "name", bridge.name, "type", "bridge")
        ip("link", "set", "dev", bridge.name, "up")
        if peer:
            bridge.netns = f"hmtest-{tag}"
            outer, inner = f"hmv{tag}a", f"hmv{tag}b"
            ip("netns", "add", bridge.netns)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", "dev", outer, "master", bridge.name, "up")
            ip("link", "set", "dev", inner, "netns", bridge.netns)
            ip("-n", bridge.netns, "addr", "add", f"{bridge.host(1)}/24", "dev", inner)
            ip("-n", bridge.netns, "link", "set", "dev", inner, "up")
            ip("-n", bridge.netns, "link", "set", "dev", "lo", "up")
        yield bridge
    finally:
        if bridge.netns is not None:
            ip("netns", "del", bridge.netns, check=False)
            ip("link", "del", "dev", f"hmv{tag}a", check=False)
        bridge.delete()
