"""Each node's watchdog, on real ``hypermachine serve`` processes sharing one storage
folder and a real 3-member etcd: a server killed, hung (SIGSTOP) or stopped while its
QEMU runs cannot leave that QEMU running past its lease — the watchdog kills it
before the others list the node down — so the VM (``on_node_failure``) is booted again
on exactly one other node, and no UUID ever has two QEMUs (the process table is
sampled all along). A server killed and started again within its lease feeds the same
watchdog, which keeps the QEMU: it is re-adopted, the same process.

One guest moves through the first three tests (each ends with it running on a new
owner); the last has its own node with a long lease and its own guest."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import watchdogs
from clusternodes import Node, make_key, owner_of, running, write_secret
from etcdcluster import EtcdCluster
from hypermachine.watchdog import LOG_NAME
from support import process_gone, qemu_pids_for, require_tiny, wait_until

pytestmark = pytest.mark.qemu

NAMES = ("w1", "w2", "w3")
SECRET = b"the-watchdog-cluster-secret-of-32-bytes-or-more"
BOOT_S = 60  # a tiny guest's boot under TCG on a busy 2-core host, with margin
# Three chained takeovers: a lease whose renewals a busy 2-core host does not miss by
# itself (the node would fence its VM on its own), still short enough to wait for.
TTL_S = 5
# w4 is killed and started again with its VM running: a third of this lease (the least
# its watchdog waits after a kill) covers a server's restart on a busy host.
LONG_TTL_S = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, etcd: EtcdCluster) -> Iterator[list[Node]]:
    require_tiny()
    root = tmp_path_factory.mktemp("watchdog")
    secret = write_secret(root, SECRET)
    shared = ("HM_SHARED_STORAGE_DIR", str(root / "shared"))
    keys = {"alice": make_key(root, etcd, "alice"), "admin": make_key(root, etcd, "ops", "--admin")}
    nodes = []
    for name in (*NAMES, "w4"):
        (root / name).mkdir()
        ttl_s = LONG_TTL_S if name == "w4" else TTL_S
        nodes.append(Node(name, root / name, keys, shared, ttl_s=ttl_s))
    with running(nodes, etcd, secret):
        yield nodes


@pytest.fixture(scope="module")
def guest(cluster: list[Node]) -> dict[str, Any]:
    """The VM that moves: created on w1, restarted on node failure."""
    return cluster[0].create("guarded", restart_policy="on_node_failure")


class Copies:
    """The most QEMUs seen at once carrying one VM's UUID."""

    def __init__(self, uuid: str) -> None:
        self.uuid, self.most = uuid, 0

    async def sample(self) -> None:
        while True:
            found = await trio.to_thread.run_sync(qemu_pids_for, {self.uuid})
            self.most = max(self.most, len(found))
            await trio.sleep(0.25)  # a second copy would live for seconds: its boot at least


@asynccontextmanager
async def sampled(uuid: str) -> AsyncIterator[Copies]:
    copies = Copies(uuid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(copies.sample)
        yield copies
        nursery.cancel_scope.cancel()
    assert copies.most <= 1, f"{copies.most} QEMUs carried the VM's UUID at once"


def _node(cluster: list[Node], name: str) -> Node:
    return next(node for node in cluster if node.name == name)


async def _running_on(
    cluster: list[Node], etcd: EtcdCluster, vm: dict[str, Any], *, not_on: Node | None = None
) -> Node:
    """The node the VM runs on, once its owner key, one QEMU and its state agree
    (``not_on``: a node not to ask, it does not answer)."""
    up = [node for node in cluster if node.server.proc and node.server.proc.poll() is None]

    def settled() -> str | None:
        owner = owner_of(etcd, vm["id"])
        if owner is None or len(qemu_pids_for({vm["uuid"]})) != 1:
            return None
        node = _node(cluster, owner)
        if node not in up or node is not_on or node.read(vm["id"])["state"] != "running":
            return None
        return owner

    owner = await wait_until(settled, timeout=TTL_S * 3 + BOOT_S, what=f"{vm['name']} running")
    return _node(cluster, str(owner))


async def _guest_running(cluster: list[Node], etcd: EtcdCluster, vm: dict[str, Any]) -> Node:
    """The node the guest runs on; started again by its owner if a test before left it
    stopped (so one failure does not fail the tests after it)."""
    owner = owner_of(etcd, vm["id"])
    if owner is not None and _node(cluster, owner).read(vm["id"])["state"] in ("stopped", "error"):
        _node(cluster, owner).call("alice", "POST", f"/api/v1/vms/{vm['id']}/start", json={})
    return await _running_on(cluster, etcd, vm)


async def _fenced_before_down(
    observers: list[Node], gone: Node, vm: dict[str, Any], pid: int
) -> None:
    """Wait until ``observers`` list ``gone`` down; by then its QEMU (``pid``) was
    killed by its watchdog (the log says so)."""
    await wait_until(
        lambda: all(node.node_states()[gone.name] == "down" for node in observers),
        timeout=TTL_S * 4,
        what=f"{gone.name} down",
    )
    assert process_gone(pid), f"{gone.name}'s QEMU outlived its lease"
    log = (gone.runtime_dir / LOG_NAME).read_text()
    assert f"killed QEMU pid {pid}" in log, log


async def test_a_killed_servers_qemu_is_fenced_and_the_vm_runs_on_exactly_one_other_node(
    cluster: list[Node], etcd: EtcdCluster, guest: dict[str, Any]
) -> None:
    first = cluster[0]
    assert (await _running_on(cluster, etcd, guest)) is first
    (pid,) = qemu_pids_for({guest["uuid"]})
    async with sampled(guest["uuid"]):
        first.server.kill9()  # the server alone: its QEMU is not touched
        await _fenced_before_down([cluster[1], cluster[2]], first, guest, pid)
        owner = await _running_on(cluster, etcd, guest)
    assert owner.name in ("w2", "w3")
    first.start(etcd, first.server.data_dir.parent / "cluster.secret")


async def test_a_hung_servers_qemu_is_fenced_and_waking_brings_no_second_copy(
    cluster: list[Node], etcd: EtcdCluster, guest: dict[str, Any]
) -> None:
    hung = await _guest_running(cluster, etcd, guest)
    others = [node for node in cluster[:3] if node is not hung]
    assert hung.server.proc is not None
    (pid,) = qemu_pids_for({guest["uuid"]})
    async with sampled(guest["uuid"]):
        hung.server.proc.send_signal(signal.SIGSTOP)
        try:
            await _fenced_before_down(others, hung, guest, pid)
            owner = await _running_on(cluster, etcd, guest, not_on=hung)
        finally:
            hung.server.proc.send_signal(signal.SIGCONT)
        assert owner is not hung
        # Awake again, it finds its lease gone, registers anew and drops its record.
        await wait_until(
            lambda: (
                hung.node_states()[hung.name] == "up"
                and hung.read(guest["id"])["node"] == owner.name
            ),
            timeout=TTL_S * 5,
            what=f"{hung.name} up, answering with {owner.name}'s record",
        )
        assert owner_of(etcd, guest["id"]) == owner.name
        assert len(qemu_pids_for({guest["uuid"]})) == 1


async def test_a_server_stopped_with_its_qemu_running_leaves_no_second_copy(
    cluster: list[Node], etcd: EtcdCluster, guest: dict[str, Any]
) -> None:
    stopped = await _guest_running(cluster, etcd, guest)
    others = [node for node in cluster[:3] if node is not stopped]
    (pid,) = qemu_pids_for({guest["uuid"]})
    async with sampled(guest["uuid"]):
        stopped.server.stop()  # SIGTERM: it leaves its lease to run out, not revoked
        log = (stopped.server.data_dir / "server.log").read_text()
        assert f"node {stopped.name} leaves with QEMUs running" in log
        await _fenced_before_down(others, stopped, guest, pid)
        owner = await _running_on(cluster, etcd, guest)
    assert owner is not stopped
    stopped.start(etcd, stopped.server.data_dir.parent / "cluster.secret")


async def test_a_server_back_within_its_lease_keeps_its_qemu(
    cluster: list[Node], etcd: EtcdCluster
) -> None:
    node = cluster[3]
    vm = node.create("kept")
    await wait_until(
        lambda: node.read(vm["id"])["state"] == "running", timeout=BOOT_S, what="kept running"
    )
    (pid,) = qemu_pids_for({vm["uuid"]})
    (watchdog,) = watchdogs.pids(node.runtime_dir)
    secret = node.server.data_dir.parent / "cluster.secret"
    async with sampled(vm["uuid"]):
        node.server.kill9()
        node.start(etcd, secret)
        again = node.read(vm["id"])
        assert (again["state"], again["pid"]) == ("running", pid), again
        node.server.stop()  # and a graceful restart
        node.start(etcd, secret)
        again = node.read(vm["id"])
        assert (again["state"], again["pid"]) == ("running", pid), again
    assert qemu_pids_for({vm["uuid"]}) == [pid]
    assert watchdogs.pids(node.runtime_dir) == [watchdog], "the same watchdog, fed again"
    assert "killed" not in (node.runtime_dir / LOG_NAME).read_text()

    # With no QEMU left, a stop revokes the lease: down at once, not a lease later.
    assert node.call("alice", "DELETE", f"/api/v1/vms/{vm['id']}?force=true").status_code == 204
    node.server.stop()
    await wait_until(
        lambda: cluster[0].node_states()["w4"] == "down",
        timeout=LONG_TTL_S / 3,
        what="w4 down once stopped",
    )
    node.start(etcd, secret)  # for the module's clean-up
