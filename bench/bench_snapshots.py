"""Snapshot benchmark: a ready guest in a fraction of a boot (docs/snapshots.md).

For the 512 MiB tiny guest, side by side in one run: cold boot -> first exec answered,
restore -> first exec (of a snapshot kept ready by a standby, and of one without),
fork -> first exec (each the median of 5), the memory snapshot's save time and size,
hibernate and resume times. Targets on this 2-core TCG machine:
restore and fork to first exec <= 0.2 x cold boot and <= 400 ms. Beside them, the floor
of a restore on this host, with bare QEMU and nothing of ours (bare_restore.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import bare_restore
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from realserver import Server, free_port  # noqa: E402

RUNS = int(os.environ.get("HM_BENCH_RUNS", "5"))
AGENT_WAIT_S = 300
TINY = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}


def _ok(response: httpx.Response, *statuses: int) -> Any:
    body = response.json() if response.content else None
    assert response.status_code in (statuses or (200,)), (response.status_code, body)
    return body


def _first_exec(client: httpx.Client, vm_id: str) -> None:
    url = f"/api/v1/vms/{vm_id}/exec?wait_agent={AGENT_WAIT_S}"
    got = _ok(client.post(url, json={"command": ["true"]}))
    assert got["exit_code"] == 0, got


def _timed(action: Callable[[], object]) -> float:
    t0 = time.monotonic()
    action()
    return (time.monotonic() - t0) * 1000


def _then_first_exec(
    client: httpx.Client, action: Callable[[], None], vm: str | dict[str, Any]
) -> tuple[float, float]:
    """Milliseconds of ``action`` (answered once the VM runs), then of the first exec
    on ``vm`` (an id, or the dict ``action`` fills with the new VM)."""
    to_running = _timed(action)
    vm_id = vm if isinstance(vm, str) else vm["id"]
    return to_running, _timed(lambda: _first_exec(client, vm_id))


def _wait_ready(client: httpx.Client, vm_id: str, name: str) -> None:
    """Until the snapshot's standby is loaded (each restore of it makes the next one)."""
    deadline = time.monotonic() + 60
    while not _ok(client.get(f"/api/v1/vms/{vm_id}/snapshots/{name}"))["ready"]:
        assert time.monotonic() < deadline, f"snapshot {name} got no standby"
        time.sleep(0.05)


def _split(key: str, runs: list[tuple[float, float]]) -> dict[str, float]:
    """The median total, and the medians of its two parts."""
    return {
        key: statistics.median(a + b for a, b in runs),
        f"{key}_running": statistics.median(a for a, _ in runs),
        f"{key}_exec": statistics.median(b for _, b in runs),
    }


def _cold_boot(client: httpx.Client, n: int) -> tuple[float, str]:
    vm: dict[str, Any] = {}

    def boot() -> None:
        body = {"name": f"cold-{n}", **TINY, "start": True, "wait": True}
        vm.update(_ok(client.post("/api/v1/vms", json=body), 201))
        _first_exec(client, vm["id"])

    return _timed(boot), vm["id"]


def bench(client: httpx.Client) -> dict[str, float]:
    cold, ids = [], []
    for n in range(RUNS):
        ms, vm_id = _cold_boot(client, n)
        cold.append(ms)
        ids.append(vm_id)
    parent = ids[-1]
    for vm_id in ids[:-1]:
        client.delete(f"/api/v1/vms/{vm_id}?force=true")

    snap: dict[str, Any] = {}

    def save() -> None:
        body = {"name": "warm", "memory": True, "standby": False}
        snap.update(_ok(client.post(f"/api/v1/vms/{parent}/snapshots", json=body), 201))

    save_ms = _timed(save)

    warm_exec = [_timed(lambda: _first_exec(client, parent)) for _ in range(RUNS)]

    def restore(name: str) -> None:
        url = f"/api/v1/vms/{parent}/snapshots/{name}/restore"
        _ok(client.post(url, json={"wait": True}))

    restores = [_then_first_exec(client, partial(restore, "warm"), parent) for _ in range(RUNS)]
    body = {"name": "ready", "memory": True}  # standby: true, the default
    _ok(client.post(f"/api/v1/vms/{parent}/snapshots", json=body), 201)
    ready = []
    for _ in range(RUNS):
        _wait_ready(client, parent, "ready")
        ready.append(_then_first_exec(client, partial(restore, "ready"), parent))

    forks = []
    for n in range(RUNS):
        child: dict[str, Any] = {}

        def fork(n: int = n, child: dict[str, Any] = child) -> None:
            body = {"name": f"fork-{n}", "snapshot": "warm", "wait": True}
            child.update(_ok(client.post(f"/api/v1/vms/{parent}/fork", json=body), 201)["vms"][0])

        forks.append(_then_first_exec(client, fork, child))
        client.delete(f"/api/v1/vms/{child['id']}?force=true")

    hibernate_ms = _timed(lambda: _ok(client.post(f"/api/v1/vms/{parent}/hibernate")))

    def resume() -> None:
        _ok(client.post(f"/api/v1/vms/{parent}/start", json={"wait": True}))
        _first_exec(client, parent)

    resume_ms = _timed(resume)
    client.delete(f"/api/v1/vms/{parent}?force=true")
    bare = bare_restore.floor(RUNS)
    return {
        **{f"bare_{key}": value for key, value in bare.items()},
        "cold": statistics.median(cold),
        "warm_exec": statistics.median(warm_exec),
        **_split("restore", restores),
        **_split("ready", ready),
        **_split("fork", forks),
        "save": save_ms,
        "size_mb": snap["size_bytes"] / 2**20,
        "hibernate": hibernate_ms,
        "resume": resume_ms,
    }


def report(f: dict[str, float]) -> None:
    cold = f["cold"]
    print(f"snapshots, 512 MiB tiny guest (median of {RUNS}; to the first exec answered):")
    print(f"  cold boot -> first exec     {cold:8.0f} ms")
    figures = (
        ("ready", "restore -> first exec"),
        ("restore", "  the same, no standby"),
        ("fork", "fork -> first exec"),
    )
    for key, label in figures:
        ms = f[key]
        print(f"  {label:<27} {ms:8.0f} ms   ({ms / cold:.2f} x cold boot; target <= 0.2 x "
              f"and <= 400 ms; E2B resume ~1 s, Firecracker restore < 8 ms with KVM)")  # fmt: skip
        running, first = f[key + "_running"], f[key + "_exec"]
        print(f"    of which: to running {running:.0f} ms, then the first exec {first:.0f} ms "
              f"(a warm guest's exec: {f['warm_exec']:.0f} ms)")  # fmt: skip
    print(f"  floor: bare QEMU 7.2, nothing of ours {f['bare_total']:4.0f} ms   (QEMU's start and "
          f"the RAM loaded {f['bare_start'] + f['bare_load']:.0f} ms, then the guest's own part "
          f"{f['bare_guest']:.0f} ms: TCG translates {f['bare_blocks']:.0f} blocks anew; its "
          f"next exec {f['bare_warm']:.0f} ms)")  # fmt: skip
    print(f"  memory snapshot save        {f['save']:8.0f} ms   ({f['size_mb']:.0f} MiB on disk)")
    print(f"  hibernate (RAM saved, QEMU gone) {f['hibernate']:3.0f} ms")
    print(f"  resume -> first exec        {f['resume']:8.0f} ms")


def on_a_server(prefix: str, work: Callable[[httpx.Client], None]) -> int:
    """Run ``work`` with a client of a fresh ``hypermachine serve`` in a temp data dir."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = Server(Path(tmp), free_port())
        server.start()
        try:
            with httpx.Client(base_url=server.url, timeout=600) as client:
                work(client)
        finally:
            server.stop()
    return 0


def main() -> int:
    return on_a_server("hm-bench-snap-", lambda client: report(bench(client)))


if __name__ == "__main__":
    sys.exit(main())
