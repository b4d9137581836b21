"""Nodes of a cluster on a real 3-member etcd: three real ``hypermachine serve``
processes register under leases and see each other; a node killed with SIGKILL turns
``down`` on the others within its lease, and ``up`` again when it comes back. Without
``--etcd`` the server lists itself alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import watchdogs
from etcdcluster import EtcdCluster
from hypermachine.config import ConfigError, Settings, load_settings
from hypermachine.watchdog import SOCKET_NAME
from realserver import Server, free_port
from support import qemu_pids_for, wait_until
from test_etcd_harness import get, put

TTL_S = 2


MINE = ("n1", "n2", "n3")


def nodes(server: Server) -> dict[str, dict[str, Any]]:
    """This test's nodes as ``server`` lists them (the session's etcd also remembers
    other tests' nodes)."""
    answer = httpx.get(f"{server.url}/api/v1/nodes", timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["cluster"] is True, body
    return {node["name"]: node for node in body["nodes"] if node["name"] in MINE}


def start_node(server: Server, name: str, etcd: EtcdCluster) -> None:
    server.start(
        ("HM_NODE_LEASE_TTL_S", str(TTL_S)),
        args=["--node", name, "--etcd", etcd.endpoints, "--advertise", server.url],
    )


def owner(etcd: EtcdCluster, vm_id: str) -> str | None:
    return get(etcd.client_urls[1], f"/hypermachine/vms/{vm_id}")


def check_ownership(node: Server, etcd: EtcdCluster, vm: dict[str, Any]) -> None:
    """The VM's owner key names its node; a VM whose key names another node is never
    started here (no QEMU), and deleting it here leaves that node's key alone."""
    assert owner(etcd, vm["id"]) == "n1"
    put(etcd.client_urls[0], f"/hypermachine/vms/{vm['id']}", "n2")  # n2 took it
    started = httpx.post(f"{node.url}/api/v1/vms/{vm['id']}/start", json={}, timeout=30)
    error = started.json()["error"]
    assert (started.status_code, error["code"]) == (409, "VM_OWNED_ELSEWHERE"), error
    assert error["details"]["node"] == "n2" and qemu_pids_for({vm["uuid"]}) == []
    put(etcd.client_urls[0], f"/hypermachine/vms/{vm['id']}", "n1")


@pytest.fixture
def three(tmp_path: Path, tiny: Path, etcd: EtcdCluster) -> Iterator[list[Server]]:
    servers = []
    for n in range(1, 4):
        data = tmp_path / f"node{n}"
        data.mkdir()
        servers.append(Server(data, free_port()))
    try:
        for n, server in enumerate(servers, start=1):
            start_node(server, f"n{n}", etcd)
        yield servers
    finally:
        for server in servers:
            server.stop()


async def test_nodes_see_each_other_and_a_killed_one_goes_down(
    three: list[Server], etcd: EtcdCluster
) -> None:
    first, second, third = three
    for server in three:
        listed = nodes(server)
        assert sorted(listed) == ["n1", "n2", "n3"]
        assert {node["state"] for node in listed.values()} == {"up"}
    n1 = nodes(second)["n1"]
    assert n1["url"] == first.url and n1["accelerator"] in ("kvm", "tcg")
    assert n1["cpus"] >= 1 and 0 < n1["free_memory_mb"] <= n1["memory_mb"] * 2
    assert "uefi" in n1["capabilities"] and n1["vms"] == 0

    created = httpx.post(
        f"{first.url}/api/v1/vms", json={"name": "parked", "image": "tiny"}, timeout=30
    ).json()
    assert created["node"] == "n1", created
    check_ownership(first, etcd, created)
    moved = httpx.post(f"{first.url}/api/v1/vms/{created['id']}/migrate", json={"node": "n2"})
    assert (moved.status_code, moved.json()["error"]["code"]) == (409, "INVALID_STATE")
    await wait_until(
        lambda: nodes(third)["n1"]["vms"] == 1, timeout=TTL_S * 5, what="n1 to count its VM"
    )

    third.kill9()
    await wait_until(
        lambda: nodes(first)["n3"]["state"] == "down", timeout=TTL_S * 3, what="n3 down"
    )
    assert nodes(second)["n3"]["state"] == "down" and nodes(second)["n2"]["state"] == "up"
    start_node(third, "n3", etcd)
    assert nodes(first)["n3"]["state"] == "up"
    deleted = httpx.delete(f"{first.url}/api/v1/vms/{created['id']}?force=true", timeout=30)
    assert deleted.status_code == 204 and owner(etcd, created["id"]) is None


def test_a_node_that_cannot_reach_etcd_does_not_start(data_dir: Path, tiny: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data_dir), "serve",
         "--port", str(port), "--node", "lonely", "--etcd", dead,
         "--advertise", f"http://127.0.0.1:{port}"],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # a configuration error, said in one line
    assert b"no etcd member answered" in done.stderr, done.stderr


def test_a_node_refused_while_it_joins_says_why_in_one_line(
    data_dir: Path, etcd: EtcdCluster, tiny: Path
) -> None:
    """A refusal found once the manager runs (here: a cluster secret too short to sign
    with) is the same one-line configuration error, not a traceback."""
    secret = data_dir / "secret"
    secret.write_bytes(b"short")
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data_dir), "serve",
         "--port", str(port), "--node", "refused", "--etcd", etcd.endpoints,
         "--advertise", f"http://127.0.0.1:{port}"],
        capture_output=True, timeout=120, check=False,
        env={**_without_hm_settings(), "HM_CLUSTER_SECRET_FILE": str(secret)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert b"cluster_secret_file" in done.stderr and b"Traceback" not in done.stderr, done.stderr


def _without_hm_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HM_")}


def test_a_cluster_node_needs_its_name_and_url() -> None:
    with pytest.raises(ConfigError, match="node name and advertise URL"):
        load_settings(environ={}, overrides={"etcd": "http://127.0.0.1:2379"})
    with pytest.raises(ConfigError, match="not http"):
        load_settings(environ={}, overrides={"etcd": "file:///etc/passwd", "node": "a"})
    with pytest.raises(ConfigError, match="DNS label"):
        load_settings(environ={}, overrides={"node": "Not_A_Label"})


async def test_a_single_host_lists_itself(client: Any, settings: Settings) -> None:
    assert not (settings.runtime_dir / SOCKET_NAME).exists(), "a single host has no watchdog"
    assert watchdogs.pids(settings.runtime_dir) == []
    answer = await client.get("/api/v1/nodes")
    body = await answer.get_json()
    assert answer.status_code == 200 and body["cluster"] is False, body
    (only,) = body["nodes"]
    assert only["state"] == "up" and only["vms"] == 0 and only["cpus"] >= 1
    assert "bios" in only["firmware"], "SeaBIOS is built into QEMU"
    created = await client.post("/api/v1/vms", json={"name": "here", "image": "tiny"})
    vm = await created.get_json()
    assert vm["node"] == only["name"]
    listed = await (await client.get("/api/v1/nodes")).get_json()
    assert listed["nodes"][0]["vms"] == 1
