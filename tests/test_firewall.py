"""The VM network rules against the host's real nftables: what each table holds,
that applying it again changes nothing and removing it twice is no error.

Tables are named from a random scratch VM id's tap, so nothing of a real VM is touched.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from hypermachine.hypervisor.devices import firewall, network
from hypermachine.models import NetworkInfo

NFT = firewall.Nftables("nft", timeout_s=10)


def listed(table: str) -> str | None:
    done = subprocess.run(
        ["nft", "list", "table", *table.split()], capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else None


@pytest.fixture
def tap() -> Iterator[str]:
    vm_id = "vm-" + secrets.token_hex(6)
    made = network.tap_name(vm_id)
    yield made
    for name in (made, network.other_tap(vm_id, made)):
        subprocess.run(["nft", "delete", "table", *firewall.tap_table(name).split()], check=False)


def info(tap: str, **fields: object) -> NetworkInfo:
    base: dict[str, object] = {"type": "bridge", "mac": "52:54:00:0a:0b:0c", "tap": tap}
    return NetworkInfo.model_validate({**base, **fields})


async def test_mac_only_guard_when_the_vm_has_no_static_address(tap: str) -> None:
    await NFT.apply(firewall.tap_guard(info(tap)))
    rules = listed(firewall.tap_table(tap))
    assert rules is not None
    assert f'iifname "{tap}" jump guest' in rules
    assert "ether saddr != 52:54:00:0a:0b:0c drop" in rules
    assert "arp saddr ether != 52:54:00:0a:0b:0c drop" in rules
    assert "ip saddr" not in rules


async def test_guard_is_idempotent_and_removal_is_too(tap: str) -> None:
    script = firewall.tap_guard(info(tap, ip="198.18.3.10/24"))
    await NFT.apply(script)
    first = listed(firewall.tap_table(tap))
    await NFT.apply(script)
    assert listed(firewall.tap_table(tap)) == first
    assert first is not None and "ip saddr != 198.18.3.10 drop" in first
    assert "arp saddr ip != { 0.0.0.0, 198.18.3.10 } drop" in first
    for _ in range(2):
        await NFT.apply(firewall.unguard(firewall.tap_table(tap)))
        assert listed(firewall.tap_table(tap)) is None


async def test_a_migrations_second_tap_is_guarded_beside_the_first(tap: str) -> None:
    """Both taps of a VM being live-migrated on one host are guarded at once; dropping
    the source's rules leaves the destination's."""
    second = network.other_tap("vm-" + tap[3:], tap)
    assert second != tap and network.other_tap("vm-" + tap[3:], second) == tap
    for name in (tap, second):
        await NFT.apply(firewall.tap_guard(info(name)))
    await NFT.apply(firewall.unguard(firewall.tap_table(tap)))
    kept = listed(firewall.tap_table(second))
    assert listed(firewall.tap_table(tap)) is None
    assert kept is not None and f'iifname "{second}" jump guest' in kept


def test_host_guard_drops_only_the_qemu_users_new_connections_to_the_host() -> None:
    script = firewall.host_guard(999, ipaddress.IPv4Network("10.0.2.0/24"))
    assert 'oif "lo" meta skuid 999 ct direction original counter drop' in script
    assert "meta skuid 999 ip daddr 10.0.2.0/24 counter drop" in script
    assert script.startswith(f"table {firewall.HOST_TABLE} {{}}\ndelete table")


def test_a_bad_mac_never_reaches_nft() -> None:
    with pytest.raises(ValueError):
        firewall.tap_guard(info("hmt0123456789ab", mac='52:54:00:0a:0b:0c" accept'))
