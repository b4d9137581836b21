"""A node of a test cluster: a real ``hypermachine serve`` on the session's etcd, and
the cluster's API keys made as an operator would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from etcdcluster import EtcdCluster
from realserver import Server, free_port

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
