"""Live migration benchmark (docs/cluster.md): the 512 MiB tiny guest moved while it
runs, median of 5, to a fresh QEMU on the same host (the baseline, measured in the
same run) and between two nodes of a real cluster on this machine (a 3-member etcd,
two ``hypermachine serve``): with its disk copied over NBD, and on shared storage.
Each: QEMU's total time and downtime, the server's switch-over, the whole request,
and the bytes of RAM and devices sent.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from bench_snapshots import on_a_server

from clusternodes import Node, make_key, write_secret
from etcdcluster import EtcdCluster, etcd_available

RUNS = int(os.environ.get("HM_BENCH_RUNS", "5"))
TINY = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}


def _ok(response: httpx.Response, *statuses: int) -> Any:
    body = response.json() if response.content else None
    assert response.status_code in (statuses or (200,)), (response.status_code, body)
    return body


_FIGURES = ("total_time_ms", "downtime_ms", "switchover_ms", "transferred_bytes")


def _moves(
    clients: list[httpx.Client], vm_id: str, targets: list[str | None]
) -> list[dict[str, float]]:
    """Migrate ``vm_id`` RUNS times, asking ``clients`` in turn (the VM's node answers
    through any), to each of ``targets`` in turn (None: the same host)."""
    url = f"/api/v1/vms/{vm_id}"
    _ok(clients[0].post(f"{url}/exec?wait_agent=300", json={"command": ["true"]}))
    runs = []
    for i in range(RUNS):
        target = targets[i % len(targets)]
        t0 = time.monotonic()
        moved = _ok(clients[i % len(clients)].post(f"{url}/migrate", json={"node": target}))
        request_ms = (time.monotonic() - t0) * 1000
        runs.append({**{k: float(moved[k]) for k in _FIGURES}, "request_ms": request_ms})
    _ok(clients[0].delete(f"{url}?force=true"), 204)
    return runs


def bench(client: httpx.Client) -> list[dict[str, float]]:
    body = {"name": "mover", **TINY, "start": True, "wait": True}
    vm = _ok(client.post("/api/v1/vms", json=body), 201)
    return _moves([client], vm["id"], [None])


_SPECS = {"disk copied": {}, "shared storage": {"restart_policy": "on_node_failure"}}


def between_nodes() -> dict[str, list[dict[str, float]]]:
    """Two nodes of a real cluster: a guest moved back and forth with its disk copied,
    then one on the shared storage."""
    with tempfile.TemporaryDirectory(prefix="hm-bench-cluster-") as tmp:
        root = Path(tmp)
        (root / "etcd").mkdir()
        etcd = EtcdCluster(root / "etcd")
        etcd.start()
        nodes: list[Node] = []
        try:
            secret = write_secret(root, b"the-bench-cluster-secret-of-32-bytes-or-more")
            keys = {"alice": make_key(root, etcd, "alice")}
            shared = ("HM_SHARED_STORAGE_DIR", str(root / "shared"))
            for name in ("b1", "b2"):
                (root / name).mkdir()
                nodes.append(Node(name, root / name, keys, shared))
                nodes[-1].start(etcd, secret)
            return _on_nodes(nodes, keys["alice"])
        finally:
            for node in nodes:
                node.server.stop()
            etcd.stop()
            _kill_left(root)


def _kill_left(root: Path) -> None:
    """VMs outlive their server by design: end the ones a failed run left."""
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(root) in arg for arg in proc.info.get("cmdline") or ()):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _on_nodes(nodes: list[Node], key: str) -> dict[str, list[dict[str, float]]]:
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.Client(base_url=n.server.url, headers=headers, timeout=600) for n in nodes]
    found = {}
    try:
        for label, extra in _SPECS.items():
            body = {"name": label.replace(" ", "-"), **TINY, **extra, "node": nodes[0].name,
                    "start": True, "wait": True}  # fmt: skip
            vm = _ok(clients[0].post("/api/v1/vms", json=body), 201)
            found[label] = _moves(clients, vm["id"], [nodes[1].name, nodes[0].name])
    finally:
        for client in clients:
            client.close()
    return found


def report(runs: list[dict[str, float]], title: str = "same host (baseline)") -> None:
    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(f"live migration, {title}, tiny guest 512 MiB, median of {len(runs)}:")
    print(f"  total time (QEMU)      {median('total_time_ms'):8.0f} ms")
    print(f"  downtime (QEMU)        {median('downtime_ms'):8.0f} ms")
    print(f"  switch-over (server)   {median('switchover_ms'):8.1f} ms")
    print(f"  whole request          {median('request_ms'):8.0f} ms")
    print(f"  sent                   {median('transferred_bytes') / 2**20:8.1f} MiB")


def main() -> int:
    status = on_a_server("hm-bench-migrate-", lambda client: report(bench(client)))
    if not etcd_available():
        print("live migration between nodes: etcd is not installed (tools/setup installs it)")
        return status
    for label, runs in between_nodes().items():
        print()
        report(runs, f"between two nodes, {label}")
    return status


if __name__ == "__main__":
    sys.exit(main())
