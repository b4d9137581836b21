"""The VM network rules against the host's real nftables: what each table holds,
that applying it again changes nothing and removing it twice is no error.

Tables are named from a random scratch VM id, so nothing of a real VM is touched.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from hypermachine.hypervisor.devices import firewall
from hypermachine.models import NetworkInfo

NFT = firewall.Nftables("nft", timeout_s=10)


def listed(table: str) -> str | None:
    done = subprocess.run(
        ["nft", "list", "table", *table.split()], capture_output=True, text=True, check=False
    )
    return done.stdout if done.returncode == 0 else None


@pytest.fixture
def vm_id() -> Iterator[str]:
    made = "vm-" + secrets.token_hex(6)
    yield made
    subprocess.run(["nft", "delete", "table", *firewall.tap_table(made).split()], check=False)


def info(**fields: object) -> NetworkInfo:
    base: dict[str, object] = {"type": "bridge", "mac": "52:54:00:0a:0b:0c", "tap": "hmtscratch0"}
    return NetworkInfo.model_validate({**base, **fields})


async def test_mac_only_guard_when_the_vm_has_no_static_address(vm_id: str) -> None:
    await NFT.apply(firewall.tap_guard(vm_id, info()))
    rules = listed(firewall.tap_table(vm_id))
    assert rules is not None
    assert 'iifname "hmtscratch0" jump guest' in rules
    assert "ether saddr != 52:54:00:0a:0b:0c drop" in rules
    assert "arp saddr ether != 52:54:00:0a:0b:0c drop" in rules
    assert "ip saddr" not in rules


async def test_guard_is_idempotent_and_removal_is_too(vm_id: str) -> None:
    script = firewall.tap_guard(vm_id, info(ip="198.18.3.10/24"))
    await NFT.apply(script)
    first = listed(firewall.tap_table(vm_id))
    await NFT.apply(script)
    assert listed(firewall.tap_table(vm_id)) == first
    assert first is not None and "ip saddr != 198.18.3.10 drop" in first
    assert "arp saddr ip != { 0.0.0.0, 198.18.3.10 } drop" in first
    for _ in range(2):
        await NFT.apply(firewall.unguard(firewall.tap_table(vm_id)))
        assert listed(firewall.tap_table(vm_id)) is None


def test_host_guard_drops_only_the_qemu_users_new_connections_to_the_host() -> None:
    script = firewall.host_guard(999, ipaddress.IPv4Network("10.0.2.0/24"))
    assert 'oif "lo" meta skuid 999 ct direction original counter drop' in script
    assert "meta skuid 999 ip daddr 10.0.2.0/24 counter drop" in script
    assert script.startswith(f"table {firewall.HOST_TABLE} {{}}\ndelete table")


def test_a_bad_mac_never_reaches_nft() -> None:
    with pytest.raises(ValueError):
        firewall.tap_guard("vm-0123456789ab", info(mac='52:54:00:0a:0b:0c" accept'))
