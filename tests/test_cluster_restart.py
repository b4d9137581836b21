"""Restart on a surviving node, on three real ``hypermachine serve`` processes sharing
one storage folder and a real 3-member etcd: a crashed node's (server and QEMU killed)
VM with ``restart_policy: on_node_failure`` boots again on exactly one other node from
the same disk file, one with the default policy stays ``unknown``, and the crashed node
back does not run the taken VM; a node whose server and watchdog died while its QEMU
runs on keeps the only copy (QEMU's image lock refuses each taker, which gives the VM
back). The
compare-and-swap of the owner key raced by two nodes has one winner; the policy
without shared storage is refused."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import trio

from clusternodes import TTL_S, Node, kill_watchdog, make_key, owner_of, running, write_secret
from etcdcluster import EtcdCluster
from hypermachine.cluster.etcd import Etcd
from hypermachine.cluster.ownership import Ownership, owner_key
from support import qemu_pids_for, require_tiny, wait_until

NAMES = ("r1", "r2", "r3")
SECRET = b"the-restart-cluster-secret-of-32-bytes-or-more"
BOOT_S = 60  # a tiny guest's boot under TCG on a busy 2-core host, with margin


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdCluster) -> Iterator[list[Node]]:
    require_tiny()
    root = tmp_path_factory.mktemp("restart")
    secret = write_secret(root, SECRET)
    shared = root / "shared"
    keys = {"alice": make_key(root, etcd, "alice"), "admin": make_key(root, etcd, "ops", "--admin")}
    nodes = []
    for name in NAMES:
        (root / name).mkdir()
        nodes.append(Node(name, root / name, keys, ("HM_SHARED_STORAGE_DIR", str(shared))))
    with running(nodes, etcd, secret):
        yield nodes


def _cmdline(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline())


def _events(node: Node, vm_id: str, wanted: str) -> dict[str, Any]:
    """The first event of type ``wanted`` of the VM in ``node``'s own log."""
    headers = {"Authorization": f"Bearer {node.keys['alice']}"}
    url = f"{node.server.url}/api/v1/events?vm_id={vm_id}&after=0"
    with httpx.stream("GET", url, headers=headers, timeout=10) as answer:
        kind = ""
        for line in answer.iter_lines():
            if line.startswith("event:"):
                kind = line.partition(":")[2].strip()
            elif line.startswith("data:") and kind == wanted:
                return dict(json.loads(line.partition(":")[2]))
    raise AssertionError(f"no {wanted} event on {node.name}")


async def test_two_nodes_taking_the_same_vm_exactly_one_wins(etcd: EtcdCluster) -> None:
    clients = [Etcd(etcd.client_urls, timeout_s=5) for _ in range(2)]
    takers = [
        Ownership(client, name, lambda: False)
        for client, name in zip(clients, ("x1", "x2"), strict=True)
    ]
    try:
        for round_ in range(20):
            vm_id = f"vm-race{round_:04d}"
            await clients[0].put(owner_key(vm_id), "gone")
            won: list[str] = []

            async def take(who: int, vm_id: str = vm_id, won: list[str] = won) -> None:
                if await takers[who].take(vm_id, "gone"):
                    won.append(("x1", "x2")[who])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, 0)
                nursery.start_soon(take, 1)
            assert len(won) == 1, won
            assert owner_of(etcd, vm_id) == won[0]
            assert not await takers[0].take(vm_id, "gone"), "a taken VM is not taken again"
            await clients[0].delete(owner_key(vm_id))
    finally:
        for client in clients:
            await client.aclose()


async def test_the_policy_needs_shared_storage(client: Any) -> None:
    body = {"name": "wants-restart", "image": "tiny", "restart_policy": "on_node_failure"}
    refused = await client.post("/api/v1/vms", json=body)
    doc = await refused.get_json()
    assert refused.status_code == 409, doc
    assert doc["error"]["code"] == "CAPABILITY_UNAVAILABLE"
    assert doc["error"]["details"]["field"] == "restart_policy"
    assert (await (await client.get("/api/v1/vms")).get_json())["vms"] == []
    gpu = {**body, "gpu": {"type": "passthrough"}}
    bad = await client.post("/api/v1/vms", json=gpu)
    problem = await bad.get_json()
    assert (bad.status_code, problem["error"]["code"]) == (400, "VALIDATION_ERROR"), problem
    assert "restart_policy" in str(problem)


async def test_a_crashed_nodes_vm_boots_again_on_exactly_one_survivor(
    cluster: list[Node], etcd: EtcdCluster
) -> None:
    first, second, third = cluster
    moved = first.create("moves", restart_policy="on_node_failure")
    stays = first.create("stays")
    assert moved["restart_policy"] == "on_node_failure" and stays["restart_policy"] == "never"
    for vm in (moved, stays):
        await wait_until(
            lambda vm=vm: first.read(vm["id"])["state"] == "running",  # type: ignore[misc]
            timeout=BOOT_S,
            what=f"{vm['name']} running on r1",
        )
    shared_disk = first.env[0][1] + f"/vms/{moved['id']}/disk.qcow2"
    layer = os.path.realpath(shared_disk)
    identity = os.stat(layer).st_ino, os.stat(layer).st_dev
    (old_pid,) = qemu_pids_for({moved["uuid"]})
    assert shared_disk in _cmdline(old_pid), "its disk is the shared storage's"

    # r1 crashes: its server and both QEMUs are killed.
    first.server.kill9()
    for pid in qemu_pids_for({moved["uuid"], stays["uuid"]}):
        os.kill(pid, signal.SIGKILL)

    def running_elsewhere() -> str | None:
        owner = owner_of(etcd, moved["id"])
        pids = qemu_pids_for({moved["uuid"]})
        if owner not in ("r2", "r3") or len(pids) != 1:
            return None
        seen = [node.read(moved["id"]) for node in (second, third)]
        done = all(vm["state"] == "running" and vm["node"] == owner for vm in seen)
        return owner if done else None

    new_owner = await wait_until(
        running_elsewhere, timeout=TTL_S * 2 + BOOT_S, what="the VM running on r2 or r3"
    )
    (new_pid,) = qemu_pids_for({moved["uuid"]})
    assert shared_disk in _cmdline(new_pid), "the same disk file"
    assert (os.stat(layer).st_ino, os.stat(layer).st_dev) == identity
    owner = second if new_owner == "r2" else third
    taken = _events(owner, moved["id"], "vm.taken_over")
    assert taken["data"]["from_node"] == "r1", taken
    for node in (second, third):
        kept = node.read(stays["id"])
        assert (kept["state"], kept["node"]) == ("unknown", "r1"), kept
    assert owner_of(etcd, stays["id"]) == "r1"

    # r1 is back: it does not run the taken VM, and drops its record of it.
    first.start(etcd, first.server.data_dir.parent / "cluster.secret")
    await wait_until(
        lambda: first.read(moved["id"])["node"] == new_owner,
        timeout=TTL_S * 3,
        what="r1 to answer for the VM with its new owner's record",
    )
    assert qemu_pids_for({moved["uuid"]}) == [new_pid], "still one QEMU with its UUID"
    assert first.read(stays["id"])["state"] == "stopped", "its own VM: as its recovery found it"
    started = first.call("alice", "POST", f"/api/v1/vms/{moved['id']}/start", json={})
    assert started.status_code == 409, started.text  # forwarded: it runs already
    assert qemu_pids_for({moved["uuid"]}) == [new_pid]

    # The new owner's server dies, and its watchdog with it, but its QEMU runs on
    # (tests/test_cluster_watchdog.py has the watchdog fence it): each node taking the
    # VM next cannot open the disk a second time (QEMU's image lock), so it gives the
    # VM back (the key names the dead server's node again, its own record goes): one
    # copy, one record.
    owner.server.kill9()
    kill_watchdog(owner)
    takers = [node for node in cluster if node is not owner]

    def gave_back(node: Node) -> bool:
        log = (node.server.data_dir / "server.log").read_text(errors="replace")
        return f"{moved['id']}: taken over but not started, given back to {owner.name}" in log

    await wait_until(
        lambda: all(gave_back(node) for node in takers),
        timeout=TTL_S * 4 + BOOT_S * 2,
        what="both takers to be refused the disk and give the VM back",
    )
    for node in takers:
        log = (node.server.data_dir / "server.log").read_text(errors="replace")
        assert "lock" in log.split(f"given back to {owner.name}")[1].splitlines()[0].lower()
        seen = node.read(moved["id"])  # from the cluster's view: no record of its own
        assert (seen["state"], seen["node"]) == ("unknown", owner.name), seen
    assert owner_of(etcd, moved["id"]) == owner.name
    assert qemu_pids_for({moved["uuid"]}) == [new_pid], "the first QEMU is the only one"
