"""A node of a test cluster: a real ``hypermachine serve`` on the session's etcd, and
the cluster's API keys made as an operator would."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

import watchdogs
from etcdcluster import EtcdCluster
from hypermachine.cluster.keys import KEYS_PREFIX
from hypermachine.cluster.membership import node_key
from hypermachine.cluster.ownership import owner_key, view_key
from hypermachine.cluster.quota import LIVE_PREFIX
from hypermachine.config import load_settings
from realserver import Server, free_port
from support import qemu_pids_for

TTL_S = 3
# A lease under which a server restarted with QEMUs running is back (registered, its
# watchdog fed) before its watchdog fences them: a restart on a busy 2-core host.
RESTART_TTL_S = 15
FREE_RATE = 24  # requests a minute of a free key, on all nodes together


class Node:
    """One node, and the cluster's API keys of its tenants (every node takes them).

    ``ttl_s``: its lease; a server of the node restarted while its QEMUs run must be
    back within about a third of it (before its watchdog fences them)."""

    def __init__(
        self, name: str, data: Path, keys: dict[str, str], *env: tuple[str, str], ttl_s: int = TTL_S
    ) -> None:
        self.name, self.server = name, Server(data, free_port())
        self.keys = keys
        self.env = env
        self.ttl_s = ttl_s

    @property
    def runtime_dir(self) -> Path:
        """Where its VMs' run dirs and its watchdog's socket are."""
        return load_settings(environ={}, overrides={"data_dir": self.server.data_dir}).runtime_dir

    def call(
        self, tenant: str, method: str, path: str, timeout: float = 60, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        url = f"{self.server.url}{path}"
        return httpx.request(method, url, headers=headers, timeout=timeout, **kwargs)

    def node_states(self) -> dict[str, str]:
        """Each node's state as this node lists it."""
        answer = self.call("admin", "GET", "/api/v1/nodes")
        assert answer.status_code == 200, answer.text
        return {node["name"]: node["state"] for node in answer.json()["nodes"]}

    def read(self, vm_id: str, tenant: str = "alice") -> dict[str, Any]:
        answer = self.call(tenant, "GET", f"/api/v1/vms/{vm_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def create(self, name: str, tenant: str = "alice", **spec: Any) -> dict[str, Any]:
        """A tiny guest created here and started."""
        body = {"name": name, "image": "tiny", "node": self.name, "start": True, **spec}
        made = self.call(tenant, "POST", "/api/v1/vms", json=body)
        assert made.status_code == 201, made.text
        return dict(made.json())

    def vms(self, tenant: str, query: str = "") -> list[dict[str, Any]]:
        answer = self.call(tenant, "GET", f"/api/v1/vms{query}")
        assert answer.status_code == 200, answer.text
        return list(answer.json()["vms"])

    def start(self, etcd: EtcdCluster, secret: Path) -> None:
        self.server.start(
            ("HM_NODE_LEASE_TTL_S", str(self.ttl_s)),
            ("HM_CLUSTER_SECRET_FILE", str(secret)),
            ("HM_VM_QUOTA_FREE", "1"),
            ("HM_RATE_LIMIT_FREE", str(FREE_RATE)),
            *self.env,
            args=["--node", self.name, "--etcd", etcd.endpoints, "--advertise", self.server.url],
        )


def owner_of(etcd: EtcdCluster, vm_id: str) -> str | None:
    """The node a VM's owner key names, read straight from etcd."""
    key = base64.b64encode(owner_key(vm_id).encode()).decode()
    answer = httpx.post(f"{etcd.client_urls[0]}/v3/kv/range", json={"key": key}, timeout=10)
    kvs = answer.json().get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def kill_watchdog(node: Node) -> None:
    """SIGKILL the node's watchdog (a crash that took it too)."""
    for pid in watchdogs.pids(node.runtime_dir):
        os.kill(pid, signal.SIGKILL)


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
