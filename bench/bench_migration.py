"""Live migration benchmark (docs/cluster.md): the 512 MiB tiny guest moved to a fresh
QEMU on this host while it runs, median of 5: QEMU's total time and downtime, the
server's switch-over, the whole request, and the bytes sent. Between two nodes: not
built yet.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import httpx
from bench_snapshots import on_a_server

RUNS = int(os.environ.get("HM_BENCH_RUNS", "5"))
TINY = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}


def _ok(response: httpx.Response, *statuses: int) -> Any:
    body = response.json() if response.content else None
    assert response.status_code in (statuses or (200,)), (response.status_code, body)
    return body


def bench(client: httpx.Client) -> list[dict[str, float]]:
    body = {"name": "mover", **TINY, "start": True, "wait": True}
    vm = _ok(client.post("/api/v1/vms", json=body), 201)
    url = f"/api/v1/vms/{vm['id']}"
    _ok(client.post(f"{url}/exec?wait_agent=300", json={"command": ["true"]}))
    runs = []
    for _ in range(RUNS):
        t0 = time.monotonic()
        moved = _ok(client.post(f"{url}/migrate", json={}))
        request_ms = (time.monotonic() - t0) * 1000
        runs.append({**{k: float(moved[k]) for k in (
            "total_time_ms", "downtime_ms", "switchover_ms", "transferred_bytes")},
            "request_ms": request_ms})  # fmt: skip
    _ok(client.delete(f"{url}?force=true"), 204)
    return runs


def report(runs: list[dict[str, float]]) -> None:
    def median(key: str) -> float:
        return statistics.median(run[key] for run in runs)

    print(f"live migration, same host, tiny guest 512 MiB, median of {len(runs)}:")
    print(f"  total time (QEMU)      {median('total_time_ms'):8.0f} ms")
    print(f"  downtime (QEMU)        {median('downtime_ms'):8.0f} ms")
    print(f"  switch-over (server)   {median('switchover_ms'):8.1f} ms")
    print(f"  whole request          {median('request_ms'):8.0f} ms")
    print(f"  sent                   {median('transferred_bytes') / 2**20:8.1f} MiB")


def main() -> int:
    return on_a_server("hm-bench-migrate-", lambda client: report(bench(client)))


if __name__ == "__main__":
    sys.exit(main())
