"""Scratch networks for tests: a uniquely named bridge, optionally a peer in a netns;
a stand-in for the outside world; listeners that record who reached them.

The bridge lives in the root namespace (QEMU opens its tap there) and carries no
address; the "host side" is a veth whose far end sits in a network namespace of
the test's own, holding the gateway address. Traffic therefore only ever goes to
the test's own namespace. The outside world (:func:`scratch_outside`) is a netns
behind a /30 veth, whose host end is the only host address the tests add.
Everything is deleted on exit, even after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@dataclass
class ScratchBridge:
    name: str
    subnet: ipaddress.IPv4Network
    netns: str | None = None
    peer_iface: str | None = None  # the peer's end of its veth, inside ``netns``
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
            bridge.peer_iface = inner
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


@dataclass
class ScratchOutside:
    """A netns standing in for the internet: ``far`` inside it, ``near`` on the host."""

    netns: str
    near: str
    far: str


@contextlib.contextmanager
def scratch_outside() -> Iterator[ScratchOutside]:
    """A netns ``hmout-<hex>`` reached from the host over a veth on 198.19.N.M/30."""
    tag = secrets.token_hex(3)
    base = ipaddress.IPv4Address("198.19.0.0") + 4 * secrets.randbelow(16384)
    outside = ScratchOutside(netns=f"hmout-{tag}", near=str(base + 1), far=str(base + 2))
    outer, inner = f"hmo{tag}a", f"hmo{tag}b"
    try:
        ip("netns", "add", outside.netns)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", "dev", inner, "netns", outside.netns)
        ip("addr", "add", f"{outside.near}/30", "dev", outer)
        ip("link", "set", "dev", outer, "up")
        ip("-n", outside.netns, "addr", "add", f"{outside.far}/30", "dev", inner)
        ip("-n", outside.netns, "link", "set", "dev", inner, "up")
        yield outside
    finally:
        ip("netns", "del", outside.netns, check=False)
        ip("link", "del", "dev", outer, check=False)


# Accept connections; for each, record "PEER FIRST-LINE" (flushed before answering),
# then answer a tiny HTTP response naming the listener.
_RECORDER = r"""
import socket, sys
host, port, name, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
server = socket.create_server((host, port), reuse_port=False)
print("READY", flush=True)
while True:
    conn, peer = server.accept()
    conn.settimeout(5)
    try:
        line = conn.makefile("rb").readline().decode(errors="replace").strip()
        with open(log, "a") as out:
            out.write(f"{peer[0]} {line}\n")
        conn.sendall(f"HTTP/1.0 200 OK\r\n\r\n{name}\n".encode())
    except OSError:
        pass
    conn.close()
"""


# Record every TCP packet arriving on an interface: "SOURCE-MAC SOURCE-IP DEST-PORT".
_SNIFFER = r"""
import socket, struct, sys
iface, log = sys.argv[1], sys.argv[2]
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
raw.bind((iface, 0))
print("READY", flush=True)
with open(log, "a", buffering=1) as out:
    while True:
        frame = raw.recv(65535)
        ip = frame[14:]
        if len(ip) < 20 or ip[9] != 6:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:]
        mac = ":".join(f"{b:02x}" for b in frame[6:12])
        out.write(f"{mac} {socket.inet_ntoa(ip[12:16])} {struct.unpack('!H', tcp[2:4])[0]}\n")
"""


@dataclass
class Recorder:
    """A TCP listener that records each client's address and request line."""

    url: str
    log: Path

    def seen(self) -> list[str]:
        return self.log.read_text().splitlines()


@contextlib.contextmanager
def recorder(
    address: str, port: int, folder: Path, *, netns: str | None = None, name: str = "hm-listener"
) -> Iterator[Recorder]:
    """A :class:`Recorder` on ``address:port`` (in ``netns`` if given), ready on entry."""
    log = folder / f"seen-{name}-{port}.log"
    with _helper(netns, log, _RECORDER, address, str(port), name):
        yield Recorder(url=f"http://{address}:{port}", log=log)


@contextlib.contextmanager
def sniffer(netns: str, iface: str, folder: Path) -> Iterator[Recorder]:
    """Every TCP packet reaching ``iface`` in ``netns``, as "MAC IP PORT" lines."""
    log = folder / f"sniffed-{iface}.log"
    with _helper(netns, log, _SNIFFER, iface):
        yield Recorder(url="", log=log)


@contextlib.contextmanager
def _helper(netns: str | None, log: Path, script: str, *args: str) -> Iterator[None]:
    """A Python helper process (in ``netns``), ready once it printed READY."""
    prefix = ["ip", "netns", "exec", netns] if netns else []
    command = [*prefix, sys.executable, "-u", "-c", script, *args]
    log.touch()
    proc = subprocess.Popen([*command, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # printed once bound; end of file if it failed
        assert ready.strip() == "READY", f"test helper {args} did not start"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
