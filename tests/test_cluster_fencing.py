"""A node cut off from etcd fences its VMs before the others may see it down.

Node ``cut`` reaches etcd only through member e3; node ``watch`` through e1 and e2. A
tiny guest runs on ``cut``; stopping e3 (the other two keep the quorum) leaves ``cut``
unable to renew its lease: its QEMU is killed and the VM is ``error`` ("fenced") by
the time ``watch`` lists ``cut`` down. Once e3 is back, ``cut`` is up again and the
fenced VM stays stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from etcdcluster import EtcdCluster
from realserver import Server, free_port
from support import qemu_pids_for, wait_until

pytestmark = pytest.mark.qemu

TTL_S = 3


def node_state(server: Server, name: str) -> str:
    listed = httpx.get(f"{server.url}/api/v1/nodes", timeout=30).json()["nodes"]
    return str({node["name"]: node["state"] for node in listed}.get(name))


@pytest.fixture
def pair(tmp_path: Path, tiny: Path, etcd: EtcdCluster) -> Iterator[tuple[Server, Server]]:
    servers = []
    for name, members in (("cut", etcd.members[2:]), ("watch", etcd.members[:2])):
        data = tmp_path / name
        data.mkdir()
        server = Server(data, free_port())
        servers.append(server)
        urls = ",".join(m.client_url for m in members)
        server.start(
            ("HM_NODE_LEASE_TTL_S", str(TTL_S)),
            args=["--node", name, "--etcd", urls, "--advertise", server.url],
        )
    try:
        yield servers[0], servers[1]
    finally:
        member = etcd.members[2]
        if member.proc is None:
            etcd.start_member(member)
        for server in servers:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                for vm in client.get("/api/v1/vms").json()["vms"]:
                    client.delete(f"/api/v1/vms/{vm['id']}?force=true")
            server.stop()


async def test_a_node_cut_off_from_etcd_fences_its_vms(
    pair: tuple[Server, Server], etcd: EtcdCluster
) -> None:
    cut, watch = pair
    body = {"name": "fenced", "image": "tiny", "memory_mb": 512, "start": True, "wait": True}
    vm = httpx.post(f"{cut.url}/api/v1/vms", json=body, timeout=180).json()
    assert vm.get("state") == "running", vm
    assert qemu_pids_for({vm["uuid"]}) == [vm["pid"]]
    assert node_state(watch, "cut") == "up"

    etcd.stop_member(etcd.members[2])
    await wait_until(
        lambda: node_state(watch, "cut") == "down", timeout=TTL_S * 4, what="cut to be down"
    )
    # Down for the others means fenced already: no QEMU of its VM runs.
    assert qemu_pids_for({vm["uuid"]}) == [], "a cut-off node's VM outlived its lease"
    fenced = httpx.get(f"{cut.url}/api/v1/vms/{vm['id']}", timeout=30).json()
    assert fenced["state"] == "error" and "fenced" in fenced["state_reason"], fenced
    refused = httpx.post(f"{cut.url}/api/v1/vms/{vm['id']}/start", json={}, timeout=30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "CLUSTER_UNAVAILABLE")

    etcd.start_member(etcd.members[2])
    await wait_until(
        lambda: node_state(watch, "cut") == "up", timeout=TTL_S * 10, what="cut to be up again"
    )
    after = httpx.get(f"{cut.url}/api/v1/vms/{vm['id']}", timeout=30).json()
    assert after["state"] == "error" and qemu_pids_for({vm["uuid"]}) == []
