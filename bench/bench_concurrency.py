"""API under load: listing running VMs, and GET one VM from 50 connections at once.

Prints, in one run on one server:
- GET /api/v1/vms with 4 *running* VMs among 20 (their documents are re-rendered with
  live facts, the slow path of the listing) beside the same listing with all 20 stopped;
- GET /api/v1/vms/{id} from 50 concurrent keep-alive connections: requests per second
  and the 50th/99th percentile latency, beside one connection alone.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from realserver import Server, free_port  # noqa: E402

CONNECTIONS = 50
PER_CONNECTION = 40
RUNNING = 4


def _median_ms(client: httpx.Client, path: str, count: int = 200) -> float:
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        assert client.get(path).status_code == 200
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def _hammer(url: str, path: str, connections: int) -> tuple[float, list[float]]:
    """``connections`` threads, each with its own connection: (requests/s, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(connections + 1)

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.get(path)  # open the connection before the clock starts
            barrier.wait()
            mine = []
            for _ in range(PER_CONNECTION):
                t0 = time.perf_counter()
                assert client.get(path).status_code == 200
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    barrier.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - t0), latencies


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def bench(client: httpx.Client, url: str) -> None:
    ids = []
    for n in range(20):
        body = {"name": f"load-{n}", "image": "tiny", "memory_mb": 512, "disk_gb": 1, "wait": True}
        ids.append(client.post("/api/v1/vms", json=body).json()["id"])
    stopped = _median_ms(client, "/api/v1/vms")
    for vm_id in ids[:RUNNING]:
        client.post(f"/api/v1/vms/{vm_id}/start", json={"wait": True})
    running = _median_ms(client, "/api/v1/vms")
    print(f"list 20 VMs, all stopped       {stopped:8.2f} ms median")
    print(f"list 20 VMs, {RUNNING} running        {running:8.2f} ms median "
          f"(ratio {running / stopped:.2f} to all stopped; target < 10 ms)")  # fmt: skip
    path = f"/api/v1/vms/{ids[0]}"
    alone, alone_lat = _hammer(url, path, 1)
    loaded, loaded_lat = _hammer(url, path, CONNECTIONS)
    print(
        f"GET one VM, 1 connection       {alone:8.0f} req/s, p50 "
        f"{_percentile(alone_lat, 50):.2f} ms, p99 {_percentile(alone_lat, 99):.2f} ms"
    )
    print(f"GET one VM, {CONNECTIONS} connections     {loaded:8.0f} req/s, p50 "
          f"{_percentile(loaded_lat, 50):.2f} ms, p99 {_percentile(loaded_lat, 99):.2f} ms "
          f"(throughput ratio {loaded / alone:.2f} to one connection)")  # fmt: skip
    for vm_id in ids:
        client.delete(f"/api/v1/vms/{vm_id}?force=true")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hm-bench-") as tmp:
        server = Server(Path(tmp), free_port())
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                bench(client, server.url)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
