"""A tenant's storage quota counted on every node (cluster/storage.py), on a real
3-member etcd: two nodes taking a tenant's last room at the same moment cannot both
have it; and on two real ``hypermachine serve`` processes, a snapshot on one node is
refused for what the tenant's VMs hold on the other, however the other goes down,
loses its count or comes back, until the tenant frees room there. No guest boots:
snapshots of stopped VMs are disk-only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from clusternodes import Node, make_key, write_secret
from etcdcluster import EtcdCluster
from hypermachine.cluster import Etcd
from hypermachine.cluster.keys import KEYS_PREFIX
from hypermachine.cluster.storage import STORAGE_PREFIX, StorageLedger
from hypermachine.errors import QuotaExceeded
from hypermachine.hypervisor.storage.snapfiles import allocated_bytes
from support import require_tiny

QUOTA_MB = 4
QUOTA = QUOTA_MB * 2**20
# Room the first node leaves: more than one snapshot of a stopped tiny VM takes (a new
# qcow2 top, ~200 KiB), less than a fresh tiny VM plus its snapshot.
LEFT = 300 * 1024
SECRET = b"the-storage-cluster-secret-of-32-bytes-or-more"


async def test_two_nodes_at_once_cannot_both_take_the_last_room(etcd: EtcdCluster) -> None:
    async with Etcd(etcd.client_urls, timeout_s=5) as client:
        nodes = [StorageLedger(client, name) for name in ("q1", "q2")]
        won: dict[str, list[str]] = {}

        async def take(ledger: StorageLedger, node: str, tenant: str) -> None:
            try:
                await ledger.admit(tenant, 600, 1000)
            except QuotaExceeded:
                return
            won.setdefault(tenant, []).append(node)

        tenants = [f"race-{n}" for n in range(8)]
        async with trio.open_nursery() as nursery:
            for tenant in tenants:
                for ledger, node in zip(nodes, ("q1", "q2"), strict=True):
                    nursery.start_soon(take, ledger, node, tenant)
        assert sorted(won) == tenants and all(len(v) == 1 for v in won.values()), won

        (winner,) = won["race-0"]
        first, second = nodes if winner == "q1" else nodes[::-1]
        await first.admit("race-0", 900, 1000)  # its own bytes replace, not add
        with pytest.raises(QuotaExceeded) as refused:
            await second.admit("race-0", 200, 1000)
        assert refused.value.details == {"kind": "storage", "limit_bytes": 1000,
                                         "used_bytes": 1100}  # fmt: skip
        await first.recount({})  # it holds nothing of the tenant now
        await second.admit("race-0", 200, 1000)
    etcd.delete_prefix(STORAGE_PREFIX)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdCluster) -> Iterator[list[Node]]:
    require_tiny()
    root = tmp_path_factory.mktemp("storage")
    secret = write_secret(root, SECRET)
    keys = {"sam": make_key(root, etcd, "sam", "--tier", "free")}
    keys["admin"] = make_key(root, etcd, "ops", "--admin")
    quota = ("HM_STORAGE_QUOTA_MB_FREE", str(QUOTA_MB))
    made = []
    for name in ("s1", "s2"):
        (root / name).mkdir()
        made.append(Node(name, root / name, keys, quota))
    try:
        for node in made:
            node.start(etcd, secret)
        yield made
    finally:
        for node in made:
            for vm in node.vms("admin") if node.server.proc else ():
                if vm["node"] == node.name:
                    node.call("admin", "DELETE", f"/api/v1/vms/{vm['id']}?force=true")
            node.server.stop()
        etcd.delete_prefix("/hypermachine/storage")  # the counts and their guards
        etcd.delete_prefix(KEYS_PREFIX)


def _stopped_vm(node: Node, name: str) -> dict[str, Any]:
    spec = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1,
            "network": {"type": "none"}, "node": node.name, "wait": True}  # fmt: skip
    made = node.call("sam", "POST", "/api/v1/vms", json=spec)
    assert made.status_code == 201 and made.json()["state"] == "stopped", made.text
    return dict(made.json())


def _snapshot(node: Node, vm: dict[str, Any], name: str) -> Any:
    return node.call("sam", "POST", f"/api/v1/vms/{vm['id']}/snapshots", json={"name": name})


def _folder(node: Node, vm: dict[str, Any]) -> Path:
    return node.server.data_dir / "vms" / str(vm["id"])


async def _counted(etcd: EtcdCluster, node: Node) -> int | None:
    async with Etcd(etcd.client_urls, timeout_s=5) as client:
        found = await client.get(f"{STORAGE_PREFIX}sam/{node.name}")
    return int(found.value) if found is not None else None


def _refused_for_storage(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "QUOTA_EXCEEDED" and error["details"]["kind"] == "storage", error
    return dict(error["details"])


async def test_a_snapshot_is_refused_for_what_the_tenant_holds_on_another_node(
    nodes: list[Node], etcd: EtcdCluster
) -> None:
    first, second = nodes
    big, small = _stopped_vm(first, "big"), _stopped_vm(second, "small")
    room = QUOTA - allocated_bytes([_folder(first, big)]) - LEFT
    (_folder(first, big) / "filler").write_bytes(b"\1" * (room // 4096 * 4096))

    kept = _snapshot(first, big, "one")
    assert kept.status_code == 201, kept.text
    held_on_first = allocated_bytes([_folder(first, big)])
    assert await _counted(etcd, first) == held_on_first <= QUOTA

    refused = _refused_for_storage(_snapshot(second, small, "one"))
    held_on_second = allocated_bytes([_folder(second, small)])
    assert held_on_second * 4 < QUOTA, "on its own, the second node has room to spare"
    assert refused == {"kind": "storage", "limit_bytes": QUOTA,
                       "used_bytes": held_on_first + held_on_second}  # fmt: skip

    # Killing the first node does not take its bytes out of the count: its files stay.
    first.server.kill9()
    _refused_for_storage(_snapshot(second, small, "one"))

    # A count lost while it was down is put back from its files when it starts.
    async with Etcd(etcd.client_urls, timeout_s=5) as client:
        await client.put(f"{STORAGE_PREFIX}sam/{first.name}", "0")
    first.start(etcd, first.server.data_dir.parent / "cluster.secret")
    assert await _counted(etcd, first) == held_on_first
    _refused_for_storage(_snapshot(second, small, "one"))

    # Deleting the VM on the first node frees its room for the second.
    gone = first.call("sam", "DELETE", f"/api/v1/vms/{big['id']}")
    assert gone.status_code == 204, gone.text
    assert await _counted(etcd, first) == 0
    taken = _snapshot(second, small, "one")
    assert taken.status_code == 201, taken.text
    assert await _counted(etcd, second) == allocated_bytes([_folder(second, small)])
