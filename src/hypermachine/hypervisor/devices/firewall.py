"""The host's nftables rules for VM networks: NAT guests kept off the host, bridge
guests held to their own MAC and address.

* **NAT** — a guest's traffic leaves through its passt (:mod:`.passt`), whose
  sockets belong to the QEMU user. :func:`host_guard` is one table,
  ``inet hm_host``: in the output hook, a packet of that user routed to the loopback
  device (which is where every packet to *any* of the host's own addresses goes) is
  dropped unless it answers a connection someone else opened (a port forward). So
  no guest reaches a service on the host's loopback or on the host's addresses;
  the outside world stays reachable. Packets of that user to the guests' own
  subnet (10.0.2.0/24: with ``--no-map-gw`` a connection to the gateway would go to
  whatever 10.0.2.2 is on the host's network) are dropped too.
* **Bridge** — :func:`tap_guard` is one table per VM, ``bridge hm_<12 hex>``, on the
  VM's tap in the bridge's prerouting hook (before forwarding or local delivery):
  frames only from the VM's MAC, ARP only for that MAC, and with a static address
  IPv4 and ARP only from it (ARP probes from 0.0.0.0 allowed) and only IPv4, ARP or
  IPv6 frames — as Incus's ``security.mac_filtering`` and ``ipv4_filtering``.

Each script replaces its table in one transaction (declare, delete, define), so
applying it again changes nothing; removing a table that is gone is no error.
Everything in a script comes from the server's own planning (validated MAC and
address, derived names), never from client text.
"""

from __future__ import annotations

import ipaddress
import re

import trio

from ...errors import HypervisorError
from ...models import NetworkInfo

__all__ = [
    "HOST_TABLE",
    "Nftables",
    "host_guard",
    "tap_guard",
    "tap_table",
    "unguard",
]

HOST_TABLE = "inet hm_host"


def tap_table(tap: str) -> str:
    """A VM's tap's bridge table: ``bridge hm_`` + the VM id's 12 hex digits (a
    migration's second tap, ``hmu…``: ``_u`` after them)."""
    digits = tap[3:]
    return f"bridge hm_{digits}" if tap.startswith("hmt") else f"bridge hm_{digits}_{tap[2]}"


def _replace(table: str, body: str) -> str:
    return f"table {table} {{}}\ndelete table {table}\ntable {table} {{\n{body}}}\n"


def unguard(table: str) -> str:
    """A script removing ``table`` whether or not it exists."""
    return f"table {table} {{}}\ndelete table {table}\n"


def host_guard(qemu_uid: int, guest_subnet: ipaddress.IPv4Network) -> str:
    """The NAT guests' rule: the QEMU user reaches no address of this host, nor
    anything on the host's side called by the guests' own subnet (their gateway)."""
    uid = int(qemu_uid)
    body = (
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        f'    oif "lo" meta skuid {uid} ct direction original counter drop\n'
        f"    meta skuid {uid} ip daddr {guest_subnet} counter drop\n"
        "  }\n"
    )
    return _replace(HOST_TABLE, body)


def _mac(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", text.lower()):
        raise ValueError(f"not a MAC address: {text!r}")
    return text.lower()


def tap_guard(info: NetworkInfo) -> str:
    """The anti-spoofing table for a bridge VM's tap (``info.tap``)."""
    if info.tap is None or info.mac is None:
        raise ValueError("a bridge VM's network has no tap or MAC planned")
    mac = _mac(info.mac)
    rules = [
        f"ether saddr != {mac} drop",
        f"ether type arp arp saddr ether != {mac} drop",
    ]
    if info.ip is not None:
        address = ipaddress.IPv4Interface(info.ip).ip
        rules += [
            f"ether type arp arp saddr ip != {{ 0.0.0.0, {address} }} drop",
            f"ether type ip ip saddr != {address} drop",
            "ether type != { ip, arp, ip6 } drop",
        ]
    body = (
        "  chain from_guest {\n"
        "    type filter hook prerouting priority filter; policy accept;\n"
        f'    iifname "{info.tap}" jump guest\n'
        "  }\n"
        "  chain guest {\n" + "".join(f"    {rule}\n" for rule in rules) + "  }\n"
    )
    return _replace(tap_table(info.tap), body)


class Nftables:
    """Applies scripts with ``nft -f -``, each within ``timeout_s``."""

    def __init__(self, binary: str, timeout_s: float) -> None:
        self._binary = binary
        self._timeout_s = timeout_s

    async def apply(self, script: str) -> None:
        """Run one script as one transaction.

        Raises:
            HypervisorError: nft is missing, refused the script, or took too long.
        """
        argv = [self._binary, "-f", "-"]
        try:
            with trio.fail_after(self._timeout_s):
                done = await trio.run_process(
                    argv, stdin=script.encode(), capture_stdout=True, capture_stderr=True,
                    check=False,
                )  # fmt: skip
        except trio.TooSlowError as err:
            raise HypervisorError(f"nft took longer than {self._timeout_s:g} s") from err
        except OSError as err:
            raise HypervisorError(f"cannot run {self._binary}: {err.strerror}") from err
        if done.returncode != 0:
            raise HypervisorError(
                "nft refused the VM network rules",
                stderr=done.stderr.decode(errors="replace").strip()[-500:],
            )
