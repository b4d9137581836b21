"""The README's quickstart, verbatim, against a real server process and a real guest."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from realserver import Server, free_port
from support import TINY_DIR, process_gone, wait_for_file_text

pytestmark = pytest.mark.qemu


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hypermachine.cli", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def server(data_dir: Path, tiny: Path) -> Iterator[Server]:
    srv = Server(data_dir, free_port())
    srv.start()
    yield srv
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            for vm in client.get("/api/v1/vms").json()["vms"]:
                client.delete(f"/api/v1/vms/{vm['id']}?force=true")
    finally:
        srv.stop()


def test_stand_in_is_labelled_and_unverified_import_needs_the_flag(
    data_dir: Path, tiny: Path
) -> None:
    refused = cli(data_dir, "image", "import", "ubuntu-22.04", str(TINY_DIR / "bootdisk.qcow2"))
    assert refused.returncode == 1
    assert "does not match the catalogue's sha256" in refused.stderr
    done = cli(
        data_dir, "image", "import", "ubuntu-22.04", str(TINY_DIR / "bootdisk.qcow2"), "--no-verify"
    )
    assert done.returncode == 0, done.stderr
    again = cli(
        data_dir, "image", "import", "ubuntu-22.04", str(TINY_DIR / "bootdisk.qcow2"), "--no-verify"
    )
    assert again.returncode == 1 and "already on disk" in again.stderr


def test_quickstart(server: Server, data_dir: Path) -> None:
    done = cli(
        data_dir, "image", "import", "ubuntu-22.04", str(TINY_DIR / "bootdisk.qcow2"), "--no-verify"
    )
    assert done.returncode == 0, done.stderr
    with httpx.Client(base_url=server.url, timeout=60) as client:
        health = client.get("/health").json()
        assert health["status"] == "healthy"
        assert health["version"] == "0.1.0"
        assert isinstance(health["uptime_seconds"], int | float)

        images = {i["name"]: i for i in client.get("/api/v1/images").json()["images"]}
        assert images["ubuntu-22.04"]["available"] is True
        assert images["ubuntu-22.04"]["stand_in"].startswith("stand-in")

        created = client.post(
            "/api/v1/vms",
            headers={"Content-Type": "application/json"},
            content=b'{"name":"my-first-vm","cpus":2,"memory_mb":2048,"disk_gb":20,'
            b'"image":"ubuntu-22.04"}',
        )
        assert created.status_code == 201, created.text
        vm = created.json()
        assert vm["id"].startswith("vm-")
        assert vm["name"] == "my-first-vm"
        assert vm["state"] == "creating"
        assert vm["created_at"].endswith("Z")

        started = client.post(f"/api/v1/vms/{vm['id']}/start")
        assert started.status_code in (200, 202), started.text
        running = client.get(f"/api/v1/vms/{vm['id']}/wait?state=running&timeout=60").json()
        got = client.get(f"/api/v1/vms/{vm['id']}").json()
        assert got["state"] == running["state"] == "running"
        assert got["cpus"] == 2 and got["memory_mb"] == 2048 and got["disk_gb"] == 20

        # SeaBIOS + syslinux + kernel under TCG: give it time.
        wait_for_file_text(data_dir / "vms" / vm["id"] / "console.log", b"HM-READY", timeout=120)
        stopped = client.post(f"/api/v1/vms/{vm['id']}/stop", json={"wait": True}).json()
        assert stopped["state"] == "stopped"
        assert process_gone(got["pid"])
