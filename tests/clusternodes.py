"""A node of a test cluster: a real ``hypermachine serve`` on the session's etcd, and
the cluster's API keys made as an operator would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from etcdcluster import EtcdCluster
from hypermachine.cluster.keys import KEYS_PREFIX
from hypermachine.cluster.membership import node_key
from hypermachine.cluster.ownership import owner_key, view_key
from hypermachine.cluster.quota import LIVE_PREFIX
from realserver import Server, free_port
from support import qemu_pids_for

TTL_S = 3
FREE_RATE = 24  # requests a minute of a free key, on all nodes together


class Node:
    """One node, and the cluster's API keys of its tenants (every node takes them)."""

    def __init__(self, name: str, data: Path, keys: dict[str, str], *env: tuple[str, str]) -> None:
        self.name, self.server = name, Server(data, free_port())
        self.keys = keys
        self.env = env

    def call(
        self, tenant: str, method: str, path: str, timeout: float = 60, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        url = f"{self.server.url}{path}"
        return httpx.request(method, url, headers=headers, timeout=timeout, **kwargs)

    def vms(self, tenant: str, query: str = "") -> list[dict[str, Any]]:
        answer = self.call(tenant, "GET", f"/api/v1/vms{query}")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["vms"])

    def start(self, etcd: EtcdCluster, secret: Path) -> None:
        self.server.start(
            ("HM_NODE_LEASE_TTL_S", str(TTL_S)),
            ("HM_CLUSTER_SECRET_FILE", str(secret)),
            ("HM_VM_QUOTA_FREE", "1"),
            ("HM_RATE_LIMIT_FREE", str(FREE_RATE)),
            *self.env,
            args=["--node", self.name, "--etcd", etcd.endpoints, "--advertise", self.server.url],
        )


def make_key(data: Path, etcd: EtcdCluster, tenant: str, *flags: str) -> str:
    """A key in the cluster's etcd, made as an operator would: ``key create --etcd``."""
    done = subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data), "key", "create",
         "--etcd", etcd.endpoints, "--name", tenant, "--tier", "pro", *flags],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.decode().split()[0]


def write_secret(root: Path, secret: bytes) -> Path:
    path = root / "cluster.secret"
    path.write_bytes(secret)
    path.chmod(0o600)
    return path


@contextmanager
def running(nodes: list[Node], etcd: EtcdCluster, secret: Path) -> Iterator[list[Node]]:
    """Start ``nodes``; on the way out delete the VMs each live one holds, stop them,
    kill any QEMU a killed node left, and clear what they left in the session's etcd
    (which outlives a test module)."""
    try:
        for node in nodes:
            node.start(etcd, secret)
        yield nodes
    finally:
        uuids = set()
        for node in nodes:
            alive = node.server.proc is not None and node.server.proc.poll() is None
            for vm in node.vms("admin") if alive else ():
                uuids.add(vm["uuid"])
                if vm["node"] == node.name:
                    node.call("admin", "DELETE", f"/api/v1/vms/{vm['id']}?force=true")
            node.server.stop()
        for pid in qemu_pids_for(uuids):
            os.kill(pid, signal.SIGKILL)
        prefixes = (KEYS_PREFIX, owner_key(""), view_key(""), LIVE_PREFIX)
        for prefix in (*prefixes, *(node_key(node.name) for node in nodes)):
            etcd.delete_prefix(prefix)
