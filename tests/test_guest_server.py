"""``hypermachine serve`` as a real process: a 60-second command streams its output while
it runs (SSE through Hypercorn), and Prometheus scrapes ``/metrics`` meanwhile.

The minute is mostly waiting, so the suite runs it in the background beside the other
tests (tests/background.py)."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import background
from livehttp import open_sse
from realserver import Server, free_port
from support import qemu_pids_for

pytestmark = pytest.mark.qemu

TICKS = 12
TICK_S = 5  # 12 x 5 s = a 60-second command


@asynccontextmanager
async def served() -> AsyncIterator[Server]:
    """A real server on a data dir of its own; its VMs are force-deleted at the end."""
    with tempfile.TemporaryDirectory(prefix="hm-streamer-") as scratch:
        data_dir = Path(scratch) / "data"
        data_dir.mkdir()
        srv = Server(data_dir, free_port())
        await trio.to_thread.run_sync(srv.start)
        uuids: set[str] = set()
        try:
            yield srv
        finally:
            with trio.CancelScope(shield=True):
                async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                    for vm in (await client.get("/api/v1/vms")).json()["vms"]:
                        uuids.add(vm["uuid"])
                        await client.delete(f"/api/v1/vms/{vm['id']}?force=true")
                await trio.to_thread.run_sync(srv.stop)
        assert qemu_pids_for(uuids) == [], "a QEMU process outlived its test"


def scrape(text: str) -> dict[str, list[Any]]:
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        families.setdefault(family.name, []).extend(family.samples)
    return families


def value(samples: list[Any], **labels: str) -> float:
    found = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, samples)
    return float(found[0])


async def check_metrics(http: httpx.AsyncClient, vm_id: str) -> None:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    m = scrape(response.text)
    assert value(m["hypermachine_vms"], state="running") == 1
    assert value(m["hypermachine_vms"], state="stopped") == 0
    assert value(m["hypermachine_vm_up"], vm_id=vm_id, state="running") == 1
    assert value(m["hypermachine_vm_guest_agent_connected"], vm_id=vm_id) == 1
    assert value(m["hypermachine_vm_cpu_seconds"], vm_id=vm_id) > 0
    assert value(m["hypermachine_vm_memory_rss_bytes"], vm_id=vm_id) > 0
    assert value(m["hypermachine_vm_memory_configured_bytes"], vm_id=vm_id) == 512 * 2**20
    disk = [s for s in m["hypermachine_vm_disk_read_bytes"] if s.labels["vm_id"] == vm_id]
    assert len(disk) == 1 and "vd0" in disk[0].labels["device"] and disk[0].value > 0, disk
    nics = [s for s in m["hypermachine_vm_network_rx_bytes"] if s.labels["vm_id"] == vm_id]
    assert nics and all(s.labels["interface"] != "lo" for s in nics)
    requests = m["hypermachine_api_requests"]
    assert value(requests, method="POST", route="/api/v1/vms", status="201") == 1
    qmp = [s for s in m["hypermachine_qmp_command_duration_seconds"] if s.name.endswith("_count")]
    assert any(s.labels["command"] == "query-blockstats" and s.value >= 1 for s in qmp)
    events = m["hypermachine_events"]
    assert value(events, type="guest_agent.connected") == 1


async def sixty_seconds() -> None:
    async with (
        served() as server,
        httpx.AsyncClient(base_url=server.url, timeout=120) as http,
        trio.open_nursery() as nursery,
    ):
        body = {"name": "streamer", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
                "start": True, "wait": True}  # fmt: skip
        vm = (await http.post("/api/v1/vms", json=body)).json()
        assert vm["state"] == "running", vm
        script = f"for i in $(seq 1 {TICKS}); do echo tick $i; sleep {TICK_S}; done"
        started = await http.post(
            f"/api/v1/vms/{vm['id']}/exec?wait_agent=120",
            json={"command": ["sh", "-c", script], "wait": False, "timeout_s": 300},
        )
        assert started.status_code == 202, started.text
        exec_id = started.json()["exec_id"]
        t0 = trio.current_time()
        stream = await open_sse(nursery, http, f"/api/v1/vms/{vm['id']}/exec/{exec_id}/stream")

        # qemu-ga reports counters for interfaces that are up; the tiny guest leaves eth0 down.
        up = await http.post(
            f"/api/v1/vms/{vm['id']}/exec", json={"command": ["ip", "link", "set", "eth0", "up"]}
        )
        assert up.json()["exit_code"] == 0, up.text
        await check_metrics(http, vm["id"])  # scraped while the command runs

        done = await stream.until(lambda m: m and m[-1]["event"] == "exit", timeout=150)
        stream.close()
        text = "".join(m["data"].get("text", "") for m in done if m["event"] == "stdout")
        assert text == "".join(f"tick {i}\n" for i in range(1, TICKS + 1))
        arrival = {}
        for m in done:
            for line in m["data"].get("text", "").splitlines():
                arrival[line] = m["at"] - t0
        # Each tick reached the client about when it was printed, not all at the end.
        assert arrival["tick 1"] < 20, arrival
        assert arrival[f"tick {TICKS // 2}"] < arrival[f"tick {TICKS}"] - 15, arrival
        result = done[-1]["data"]
        assert (result["status"], result["exit_code"]) == ("exited", 0)
        assert result["duration_ms"] >= (TICKS - 1) * TICK_S * 1000
        nursery.cancel_scope.cancel()


@pytest.mark.background.with_args(sixty_seconds)
def test_sixty_second_command_streams_while_it_runs(
    tiny: Path, request: pytest.FixtureRequest
) -> None:
    background.outcome(request.node.nodeid, sixty_seconds, timeout_s=400)
